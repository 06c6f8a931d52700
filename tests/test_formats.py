"""How the command line writes values: exact, unambiguous and the same on every machine."""

from __future__ import annotations

import datetime
import decimal
import io
import json

from parallel_connection.formats import json_text, text, write_rows


def written(fmt: str, columns: list[str], rows: list[tuple], **kwargs: object) -> str:
    out = io.StringIO()
    write_rows(fmt, columns, rows, out, **kwargs)
    return out.getvalue()


def test_numerics_are_exact_in_json():
    value = decimal.Decimal("12345678901234567890.123456789")
    assert json.loads(json_text([value, 0.1]), parse_float=decimal.Decimal) == [value, decimal.Decimal("0.1")]


def test_values_json_cannot_hold_are_strings():
    assert json.loads(json_text([float("nan"), decimal.Decimal("Infinity"), b"\x00\xff"])) == [
        "NaN",
        "Infinity",
        "\\x00ff",
    ]


def test_dates_are_iso_8601():
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert json.loads(json_text({"at": moment, "day": moment.date()})) == {
        "at": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
    }
    assert text(moment) == "2024-01-02 03:04:05+00:00"


def test_cells_for_tables_and_csv():
    assert [text(None), text(None, "NULL"), text(True), text(False)] == ["", "NULL", "true", "false"]
    assert text(["a", None, {"k": decimal.Decimal("1.50")}]) == '["a", null, {"k": 1.50}]'


def test_csv_quotes_what_needs_quoting():
    assert written("csv", ["a", "b"], [("x,y", 'say "hi"\nbye')]) == 'a,b\n"x,y","say ""hi""\nbye"\n'


def test_table_aligns_numbers_right_and_escapes_newlines():
    got = written("table", ["n", "word"], [(5, "a\nb"), (123, None)])
    assert got == "  n  | word\n-----+------\n   5 | a\\nb\n 123 |\n(2 rows)\n"


def test_empty_results():
    assert written("json", ["a"], []) == "[]\n"
    assert written("csv", ["a"], []) == "a\n"
    assert written("table", ["a"], []) == " a\n---\n(0 rows)\n"
    assert written("table", ["a"], [(1,)], header=False) == " 1\n(1 row)\n"
