"""Notebook reprs of placement reports: short whatever the report's size, their HTML escaped."""

from __future__ import annotations

from parallel_connection.display import short, short_repr
from parallel_connection.placement_check import PlacementReport, ShardCheck, TableCheck


def big_report(tables=300, shards=64):
    """Every table misplaced rows on every shard, and is missing on one."""
    checks = []
    for t in range(tables):
        per_shard = [
            ShardCheck(
                s, f"shard {s} (10.0.0.{s}:5432/shop)", rows=1000, targets={s: 990, (s + 1) % shards: 10}
            )
            for s in range(shards - 1)
        ]
        per_shard.append(
            ShardCheck(shards - 1, f"shard {shards - 1} (10.0.0.9:5432/shop)", missing="no such table")
        )
        checks.append(TableCheck(f"orders_{t}", "sharded", tuple(per_shard), "modulo(customer_id)"))
    return PlacementReport(tuple(checks), shards)


def test_a_big_placement_reports_reprs_stay_short():
    report = big_report()
    assert len(report.summary()) > 1_000_000, "the report itself is big"
    assert repr(report) == "PlacementReport(ok=False, tables=300, problems=19200)"
    html = report._repr_html_()
    assert len(html) < 20_000 and "... and 280 more tables" in html
    table = report.tables[0]
    assert len(repr(table)) < 300 and repr(table).endswith("(and 63 more problems))")
    assert len(table._repr_html_()) < 2_000 and "(56 more shards)" in table._repr_html_()


def test_placement_html_escapes_names_and_problems():
    shard = ShardCheck(0, "shard 0 (<b>:5432/db)", missing="no column <script>")
    report = PlacementReport((TableCheck("t<i>", "copied", (shard,)),), 1)
    for html in (report._repr_html_(), report.tables[0]._repr_html_()):
        assert "<script>" not in html and "<i>" not in html and "&lt;script&gt;" in html


def test_short_reprs_cut_long_values():
    assert short("a\nb   c") == "a b c"
    assert short("x" * 500, 10) == "x" * 9 + "…"
    assert short_repr(list(range(1000))) == "[0, 1, 2, 3, ...]"
    assert len(short_repr({"k": "v" * 10_000})) < 100

    class Broken:
        def __repr__(self):
            raise RuntimeError("no")

    assert short_repr([Broken()]).startswith("[<Broken instance at")
