"""Placements: shard functions, names, the Placement value, TOML, binding; Hash against PostgreSQL itself."""

from __future__ import annotations

import dataclasses
import random
import uuid
from decimal import Decimal

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from parallel_connection.placement import (
    BoundPlacement,
    Custom,
    Hash,
    Modulo,
    Placement,
    Ranges,
    ShardedTable,
    ShardFunction,
    parse_name,
)

# -- shard functions ---------------------------------------------------------------------------------


def test_modulo_takes_the_mathematical_remainder():
    assert [Modulo().shard_of(k, 3) for k in (0, 1, 2, 3, 7)] == [0, 1, 2, 0, 1]
    assert [Modulo().shard_of(k, 3) for k in (-1, -2, -3, -4)] == [2, 1, 0, 2]
    assert Modulo().shard_of(10**30 + 1, 10) == 1


def test_modulo_takes_integral_decimals():
    assert Modulo().shard_of(Decimal("7"), 3) == 1
    assert Modulo().shard_of(Decimal("7.000"), 3) == 1


@pytest.mark.parametrize("key", [True, False, None, "7", 7.0, Decimal("7.5"), Decimal("NaN"), b"7"])
def test_modulo_refuses_keys_that_are_not_integers(key):
    with pytest.raises(psycopg2.DataError, match="modulo") as info:
        Modulo().shard_of(key, 3)
    assert type(key).__name__ in str(info.value)


def test_errors_never_echo_huge_values():
    with pytest.raises(psycopg2.DataError) as info:
        Hash().shard_of(10**5000, 3)
    assert "bits" in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(psycopg2.DataError) as info:
        Modulo().shard_of("x" * 100_000, 3)
    assert "str" in str(info.value) and len(str(info.value)) < 200


def test_every_function_has_a_name():
    assert (Modulo.name, Hash.name, Ranges.name, Custom.name) == ("modulo", "hash", "ranges", "custom")
    assert Modulo().name == "modulo"
    assert all(issubclass(cls, ShardFunction) for cls in (Modulo, Hash, Ranges, Custom))


def test_integer_types_hash_alike_and_decimals_like_their_integer():
    h = Hash()
    for n in (3, 4, 7, 64):
        assert [h.shard_of(k, n) for k in range(-50, 50)] == [
            h.shard_of(Decimal(k), n) for k in range(-50, 50)
        ]
    assert all(0 <= h.shard_of(k, 5) < 5 for k in range(1000))


@pytest.mark.parametrize(
    "key", [True, None, 1.5, Decimal("1.5"), 2**63, -(2**63) - 1, "a\x00b", "\ud800", object()]
)
def test_hash_refuses_keys_it_cannot_map(key):
    with pytest.raises(psycopg2.DataError, match="hash"):
        Hash().shard_of(key, 3)


def test_hash_takes_bigint_bounds_bytes_and_uuids():
    for key in (2**63 - 1, -(2**63), b"", bytearray(b"ab"), memoryview(b"ab"), uuid.uuid4()):
        assert 0 <= Hash().shard_of(key, 7) < 7
    assert Hash().shard_of(bytearray(b"ab"), 7) == Hash().shard_of(b"ab", 7) == Hash().shard_of("ab", 7)


def test_ranges_split_at_each_boundary():
    r = Ranges((1000, 2000))
    assert [r.shard_of(k, 3) for k in (-(10**20), 999, 1000, 1999, 2000, 10**20)] == [0, 0, 1, 1, 2, 2]
    assert r.shards == (0, 1, 2)
    assert Ranges((1000, 2000), (2, 0, 1)).shard_of(1500, 3) == 0
    assert r.shard_of(Decimal("1000"), 3) == 1


def test_ranges_of_strings_compare_by_code_point():
    r = Ranges(("N", "a"))
    assert [r.shard_of(k, 3) for k in ("A", "N", "Z", "a", "é")] == [0, 1, 1, 2, 2]
    with pytest.raises(psycopg2.DataError, match="ranges"):
        r.shard_of(5, 3)
    with pytest.raises(psycopg2.DataError, match="ranges"):
        Ranges((1, 2)).shard_of("1", 3)


def test_ranges_without_splits_put_everything_on_one_shard():
    r = Ranges((), (2,))
    assert r.shard_of(5, 3) == r.shard_of("x", 3) == 2
    with pytest.raises(psycopg2.DataError):
        r.shard_of(None, 3)


def test_ranges_refuse_a_shard_the_connection_lacks():
    with pytest.raises(psycopg2.DataError, match="shard 5"):
        Ranges((10,), (0, 5)).shard_of(20, 3)
    assert Ranges((10,), (0, 5)).shard_of(1, 3) == 0


@pytest.mark.parametrize(
    "splits, shards, error",
    [
        ((2, 1), None, ValueError),
        ((1, 1), None, ValueError),
        ((1, "b"), None, ValueError),
        ((True, 2), None, ValueError),
        ((1.5,), None, ValueError),
        ((1, 2), (0, 1), ValueError),
        ((1,), (0, -1), ValueError),
        ((1,), (0, True), ValueError),
        ("abc", None, TypeError),
        (5, None, TypeError),
        ((1,), "01", TypeError),
    ],
)
def test_ranges_validate_their_splits_and_shards(splits, shards, error):
    with pytest.raises(error):
        Ranges(splits, shards)


def test_ranges_store_tuples_and_equal_when_they_map_alike():
    r = Ranges([1000, 2000], [0, 1, 2])
    assert r.splits == (1000, 2000) and r.shards == (0, 1, 2)
    assert r == Ranges((1000, 2000)) and hash(r) == hash(Ranges((1000, 2000)))
    assert r != Ranges((1000, 2000), (1, 1, 2)) and r != Ranges((1000, 3000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.splits = (1,)  # type: ignore[misc]


def by_parity(key):
    return key % 2


def test_custom_checks_what_the_callable_returns():
    assert Custom(by_parity).shard_of(3, 2) == 1
    for bad in (lambda k: 5, lambda k: -1, lambda k: True, lambda k: "0", lambda k: 1.0):
        with pytest.raises(psycopg2.DataError, match="custom"):
            Custom(bad).shard_of(1, 3)


def test_custom_wraps_the_callables_failure_as_a_data_error():
    with pytest.raises(psycopg2.DataError, match="KeyError") as info:
        Custom({}.__getitem__).shard_of("k", 3)
    assert isinstance(info.value.__cause__, KeyError)


def test_custom_equals_only_the_same_function_object():
    assert Custom(by_parity) == Custom(by_parity) and hash(Custom(by_parity)) == hash(Custom(by_parity))
    assert Custom(by_parity) != Custom(lambda k: k % 2)
    assert Custom(by_parity) != Modulo()
    with pytest.raises(TypeError):
        Custom(5)  # type: ignore[arg-type]


def test_functions_compare_by_how_they_map():
    assert Modulo() == Modulo() and Hash() == Hash() and Modulo() != Hash()
    assert len({Modulo(), Modulo(), Hash(), Ranges((1,)), Ranges((1,), (0, 1))}) == 3


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("orders", (None, "orders")),
        ("Orders", (None, "orders")),
        ("public.Orders", ("public", "orders")),
        ('"MixedCase"."T"', ("MixedCase", "T")),
        ('"with.dot".t', ("with.dot", "t")),
        ('"a""b"', (None, 'a"b')),
        (' public . "X" ', ("public", "X")),
        ("_t$1", (None, "_t$1")),
        ("ÄBC", (None, "Äbc")),
        ("a" * 70, (None, "a" * 63)),
        ("é" * 40, (None, "é" * 31)),
    ],
)
def test_parse_name_reads_names_as_sql_does(text, parsed):
    assert parse_name(text) == parsed


@pytest.mark.parametrize("text", ["a.b.c", "a.", ".a", "", "  ", '""', '"open', "a b", "a-b", "1a", "a..b"])
def test_parse_name_refuses_what_is_not_a_table_name(text):
    with pytest.raises(ValueError) as info:
        parse_name(text)
    assert repr(text) in str(info.value)


def test_sharded_table_reads_its_key_like_an_identifier():
    t = ShardedTable("Sales.Orders", "Customer_ID")
    assert (t.name, t.schema, t.relname, t.key, t.function) == (
        "Sales.Orders",
        "sales",
        "orders",
        "customer_id",
        Modulo(),
    )
    quoted = ShardedTable('"Orders"', '"CustomerID"', "hash")
    assert (quoted.schema, quoted.relname, quoted.key, quoted.function) == (
        None,
        "Orders",
        "CustomerID",
        Hash(),
    )
    assert quoted.key_sql == '"CustomerID"'
    assert eval(repr(quoted)) == quoted
    with pytest.raises(ValueError):
        ShardedTable("orders", "a.b")
    with pytest.raises(ValueError):
        ShardedTable("a.b.c", "k")
    with pytest.raises(TypeError):
        ShardedTable("orders", "k", Hash)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.key = "x"  # type: ignore[misc]


# -- the placement value ----------------------------------------------------------------------------


def test_placement_takes_every_sharded_form():
    p = Placement(
        {
            "orders": "customer_id",
            "events": ("id", "hash"),
            "items": ("order_id", Ranges((10,))),
            "odd": ("k", by_parity),
            "plain": ("k",),
            "full": ShardedTable("full", "k", Hash()),
        },
        copied=["customers", "public.nation"],
    )
    assert [(t.name, t.key, t.function) for t in p.sharded] == [
        ("orders", "customer_id", Modulo()),
        ("events", "id", Hash()),
        ("items", "order_id", Ranges((10,))),
        ("odd", "k", Custom(by_parity)),
        ("plain", "k", Modulo()),
        ("full", "k", Hash()),
    ]
    assert p.copied == ("customers", "public.nation") and p.unknown == "refuse"
    assert Placement([ShardedTable("orders", "customer_id")]) == Placement({"orders": "customer_id"})


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"copied": "cust"}, "copied=['cust']"),
        ({"copied": b"cust"}, "copied=['cust']"),
        ({"sharded": "orders"}, "sharded={'orders': 'customer_id'}"),
        ({"sharded": ["orders"]}, "sharded={'orders': 'customer_id'}"),
        ({"copied": [5]}, "str"),
        ({"sharded": {"orders": 5}}, "key"),
        ({"sharded": {"orders": ("k", 5)}}, "shard function"),
    ],
)
def test_placement_refuses_the_wrong_kind_of_argument(kwargs, hint):
    with pytest.raises(TypeError) as info:
        Placement(**kwargs)
    assert hint in str(info.value)


def test_placement_refuses_an_unknown_policy_or_function():
    with pytest.raises(ValueError, match="unknown"):
        Placement(unknown="copied")
    with pytest.raises(ValueError, match="splits"):
        Placement({"t": ("k", "ranges")})
    with pytest.raises(ValueError, match="nope"):
        Placement({"t": ("k", "nope")})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sharded": {"cust": "id"}, "copied": ["cust"]},
        {"copied": ["cust", "Cust"]},
        {"sharded": [ShardedTable("t", "a"), ShardedTable("T", "b")]},
        {"sharded": {"public.t": "a", "PUBLIC.T": "b"}},
    ],
)
def test_placement_refuses_a_table_named_twice(kwargs):
    with pytest.raises(ValueError, match="twice"):
        Placement(**kwargs)


def test_placement_tells_quoted_and_unquoted_names_apart():
    p = Placement(copied=["orders", '"Orders"'])
    assert p.copied == ("orders", '"Orders"')


def test_placement_refuses_a_sharded_table_filed_under_another_name():
    with pytest.raises(ValueError, match="another table"):
        Placement({"orders": ShardedTable("items", "k")})


def test_placement_is_an_immutable_value():
    a = Placement({"orders": "customer_id", "items": ("id", "hash")}, ["c", "d"])
    b = Placement({"items": ("id", "hash"), "orders": "customer_id"}, ["d", "c"])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Placement({"orders": "customer_id", "items": ("id", "hash")}, ["c", "d"], "sharded")
    assert a != Placement({"orders": ("customer_id", "hash"), "items": ("id", "hash")}, ["c", "d"])
    assert a != "placement"
    with pytest.raises(AttributeError):
        a.unknown = "sharded"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.extra = 1  # type: ignore[attr-defined]


def test_placement_repr_reads_back_equal():
    p = Placement(
        {"orders": ('"CustomerID"', Ranges((1, 2), (2, 1, 0))), '"S"."T"': "k"}, ["nation"], "sharded"
    )
    text = repr(p)
    assert "orders" in text and "nation" in text and "sharded" in text
    assert eval(text) == p


def test_copies_only_reads_every_other_table_as_sharded():
    p = Placement.copies_only(["customers"])
    assert (p.sharded, p.copied, p.unknown) == ((), ("customers",), "sharded")
    with pytest.raises(TypeError, match=r"copied=\['cust'\]"):
        Placement.copies_only("cust")


def test_check_shards_refuses_a_range_on_a_missing_shard():
    p = Placement({"a": ("id", Ranges((10, 20), (0, 4, 1))), "b": "id"})
    p.check_shards(5)
    with pytest.raises(ValueError, match=r"'a'.*shard 4"):
        p.check_shards(4)
    with pytest.raises(ValueError):
        p.check_shards(0)


# -- TOML ---------------------------------------------------------------------------------------------


EXAMPLE = """
unknown = "refuse"          # optional
copied = ["customers", "public.nation"]
[sharded.orders]
key = "customer_id"
function = "modulo"
[sharded.events]
key = "id"
function = "ranges"
splits = [1000, 2000]
shards = [2, 0, 1]
[sharded."Sales.Items"]
key = "Item_ID"
function = "hash"
"""


def test_from_toml_reads_the_documented_format():
    p = Placement.from_toml(EXAMPLE)
    assert p == Placement(
        {
            "orders": "customer_id",
            "events": ("id", Ranges((1000, 2000), (2, 0, 1))),
            "Sales.Items": ("item_id", Hash()),
        },
        ["customers", "public.nation"],
    )
    assert Placement.from_toml("") == Placement()
    assert Placement.from_toml('[sharded]\norders = "customer_id"\n') == Placement({"orders": "customer_id"})


def test_from_dict_reads_the_same_structure():
    data = {"copied": ["c"], "sharded": {"orders": {"key": "id", "function": "hash"}}, "unknown": "sharded"}
    assert Placement.from_dict(data) == Placement({"orders": ("id", "hash")}, ["c"], "sharded")


def test_to_toml_reads_back_equal():
    p = Placement(
        {
            "orders": "customer_id",
            '"Weird ""name"""."Tab\\le"': ('"Mixed Key"', "hash"),
            "events": ("id", Ranges((-5, 1000), (2, 0, 1))),
            "public.words": ("w", Ranges(("\x01", 'a"b', "c\\d", "e\nf", "é"))),
            "plain": ("k", Ranges((1,))),
        },
        ["customers", '"Odd ""copy"""', "public.nation"],
        "sharded",
    )
    text = p.to_toml()
    back = Placement.from_toml(text)
    assert back == p
    assert [t.name for t in back.sharded] == [t.name for t in p.sharded]
    assert back.copied == p.copied
    assert "shards" not in text.split("[sharded.plain]")[1]
    assert Placement.from_toml(Placement().to_toml()) == Placement()


def test_to_toml_refuses_a_custom_function():
    with pytest.raises(ValueError, match=r"'odd'.*custom"):
        Placement({"odd": ("k", by_parity)}).to_toml()


def test_from_file_names_the_file_in_its_errors(tmp_path):
    good = tmp_path / "placement.toml"
    good.write_text(EXAMPLE, encoding="utf-8")
    assert Placement.from_file(good) == Placement.from_toml(EXAMPLE)
    assert Placement.from_file(str(good)) == Placement.from_toml(EXAMPLE)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sharded.orders]\nfunction = 'hash'\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        Placement.from_file(bad)
    assert str(bad) in str(info.value) and "'orders'" in str(info.value) and "missing key" in str(info.value)


@pytest.mark.parametrize(
    "text, words",
    [
        ("copy = ['a']", ["'copy'", "unknown setting"]),
        ("[sharded.orders]\nkey = 'id'\nfuction = 'hash'", ["'orders'", "'fuction'"]),
        ("[sharded.orders]\nfunction = 'hash'", ["'orders'", "missing key"]),
        ("[sharded.orders]\nkey = 5", ["'orders'", "key"]),
        ("[sharded.orders]\nkey = 'a.b'", ["'orders'", "'a.b'"]),
        ("[sharded.orders]\nkey = 'id'\nfunction = 'md5'", ["'orders'", "'md5'"]),
        ("[sharded.orders]\nkey = 'id'\nfunction = 'ranges'", ["'orders'", "splits"]),
        ("[sharded.orders]\nkey = 'id'\nsplits = [1]", ["'orders'", "splits", "ranges"]),
        ("[sharded.orders]\nkey = 'id'\nfunction = 'ranges'\nsplits = [2, 1]", ["'orders'", "increasing"]),
        ("[sharded.orders]\nkey = 'id'\nfunction = 'ranges'\nsplits = [1.5]", ["'orders'", "splits"]),
        ("[sharded.orders]\nkey = 'id'\nfunction = 'ranges'\nsplits = 5", ["'orders'", "arrays"]),
        (
            "[sharded.orders]\nkey = 'id'\nfunction = 'ranges'\nsplits = [1]\nshards = [0]",
            ["'orders'", "shards"],
        ),
        ("[sharded.public.orders]\nkey = 'id'", ['[sharded."public.orders"]']),
        ("[sharded]\norders = 5", ["'orders'"]),
        ("sharded = 5", ["sharded"]),
        ("unknown = 'copied'", ["unknown", "'copied'"]),
        ("copied = 'cust'", ["copied", "list"]),
        ("copied = ['cust']\n[sharded.cust]\nkey = 'id'", ["'cust'", "twice"]),
        ("copied = ['a'", ["TOML"]),
    ],
)
def test_from_toml_errors_name_the_table_and_the_setting(text, words):
    with pytest.raises(ValueError) as info:
        Placement.from_toml(text)
    message = str(info.value)
    assert message.startswith("placement TOML")
    for word in words:
        assert word in message


# -- binding ----------------------------------------------------------------------------------------


CATALOG = {
    ("public", "orders"),
    ("public", "cust"),
    ("sales", "items"),
    ("sales", "orders"),
    ("public", "Odd"),
}


def resolve(schema, name):
    """The test catalog with search_path = public, sales."""
    if schema is not None:
        return (schema, name) if (schema, name) in CATALOG else None
    for path in ("public", "sales"):
        if (path, name) in CATALOG:
            return (path, name)
    return None


def test_bind_keys_the_placement_by_catalog_relation():
    p = Placement({"orders": "customer_id", "sales.orders": ("id", "hash")}, ["items", '"Odd"', "gone"])
    bound = p.bind(resolve)
    assert isinstance(bound, BoundPlacement)
    assert dict(bound.sharded) == {
        ("public", "orders"): p.sharded[0],
        ("sales", "orders"): p.sharded[1],
    }
    assert bound.copied == {("sales", "items"), ("public", "Odd")}
    assert bound.unresolved == ("gone",) and bound.unknown == "refuse"
    assert bound.kind_of(("public", "orders")) == "sharded"
    assert bound.kind_of(("sales", "items")) == "copied"
    assert bound.kind_of(("public", "cust")) is None
    assert bound.table(("sales", "orders")).function == Hash()
    assert bound.table(("sales", "items")) is None
    assert bound == p.bind(resolve) and hash(bound) == hash(p.bind(resolve))
    with pytest.raises(dataclasses.FrozenInstanceError):
        bound.unknown = "sharded"  # type: ignore[misc]
    with pytest.raises(TypeError):
        bound.sharded[("x", "y")] = p.sharded[0]  # type: ignore[index]


@pytest.mark.parametrize(
    "placement",
    [Placement(copied=["cust", "public.cust"]), Placement({"cust": "id"}, ["public.cust"])],
)
def test_bind_refuses_two_names_for_one_relation(placement):
    with pytest.raises(ValueError) as info:
        placement.bind(resolve)
    assert "'cust'" in str(info.value) and "'public.cust'" in str(info.value)


def test_bind_keeps_names_a_later_catalog_may_hold():
    p = Placement({"later": "id"}, unknown="sharded")
    assert p.bind(resolve).unresolved == ("later",) and not p.bind(resolve).sharded
    assert p.bind(lambda schema, name: ("public", name)).kind_of(("public", "later")) == "sharded"


# -- Hash against PostgreSQL's own hash partitioning ----------------------------------------------------

MODULI = (3, 4, 7)
TYPES = ("int2", "int4", "int8", "text", "varchar", "bytea", "uuid")
BOUNDS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}


def _integers(bound: int) -> list[int]:
    rnd = random.Random(bound)
    values = {0, 1, -1, 2, -2, 12, -12, 255, 256, -256, bound - 1, -bound, bound // 2, -bound // 2}
    values |= {v for k in range(bound.bit_length()) for v in (2**k - 1, 2**k, -(2**k), -(2**k) - 1)}
    values |= {rnd.randrange(-bound, bound) for _ in range(400)} | set(range(-40, 40))
    return sorted(v for v in values if -bound <= v < bound)


def _texts(utf8: bool) -> list[str]:
    rnd = random.Random(7)
    alphabet = "abcXYZ019 _-'\"\\" + ("éßñ€日本語🎉\u0301" if utf8 else "")
    values = {"", "a", "orders", "The quick brown fox jumps over the lazy dog", "x" * 1000, "long " * 2000}
    values |= {"".join(rnd.choice(alphabet) for _ in range(n)) for n in range(40) for _ in range(6)}
    values |= {"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(40, 300))) for _ in range(50)}
    if utf8:
        values |= {"é", "日本語", "🎉", "é" * 11, "日" * 4, "a🎉" * 5}
    return sorted(values)


def _values(typ: str, utf8: bool) -> list[object]:
    if typ in BOUNDS:
        return list(_integers(BOUNDS[typ]))
    if typ == "bytea":
        rnd = random.Random(3)
        return [b"", b"\x00", b"\xff" * 13] + [rnd.randbytes(n) for n in range(40)] + [rnd.randbytes(5000)]
    if typ == "uuid":
        rnd = random.Random(5)
        return [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)] + [
            uuid.UUID(int=rnd.getrandbits(128)) for _ in range(300)
        ]
    return list(_texts(utf8))


def _parent(typ: str, modulus: int) -> str:
    return f"placement_hash_{typ}_{modulus}"


@pytest.fixture(scope="module")
def hashed(servers):
    """Hash-partitioned tables on the reference server, filled: (connection, UTF8 database?)."""
    conn = psycopg2.connect(servers.reference_dsn)
    conn.autocommit = True
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    with conn.cursor() as cur:
        cur.execute("SHOW server_encoding")
        utf8 = cur.fetchone()[0] == "UTF8"
    parents = [_parent(t, m) for t in TYPES for m in MODULI]
    try:
        with conn.cursor() as cur:
            for typ in TYPES:
                for modulus in MODULI:
                    parent = sql.Identifier(_parent(typ, modulus))
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(parent))
                    cur.execute(
                        sql.SQL("CREATE TABLE {} (k {}) PARTITION BY HASH (k)").format(parent, sql.SQL(typ))
                    )
                    for remainder in range(modulus):
                        cur.execute(
                            sql.SQL(
                                "CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})"
                            ).format(
                                sql.Identifier(f"{_parent(typ, modulus)}_r{remainder}"),
                                parent,
                                sql.Literal(modulus),
                                sql.Literal(remainder),
                            )
                        )
                    psycopg2.extras.execute_values(
                        cur,
                        sql.SQL("INSERT INTO {} (k) VALUES %s").format(parent).as_string(conn),
                        [(v,) for v in _values(typ, utf8)],
                        page_size=500,
                    )
        yield conn, utf8
    finally:
        with conn.cursor() as cur:
            for parent in parents:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(parent)))
        conn.close()


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("typ", TYPES)
def test_hash_matches_postgres_hash_partitioning(hashed, typ, modulus):
    conn, utf8 = hashed
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT k, tableoid::regclass::text FROM {}").format(
                sql.Identifier(_parent(typ, modulus))
            )
        )
        rows = cur.fetchall()
    assert len(rows) == len(_values(typ, utf8)) > 30
    prefix = _parent(typ, modulus) + "_r"
    wrong = [(k, part) for k, part in rows if f"{prefix}{Hash().shard_of(k, modulus)}" != part]
    assert not wrong[:5]
    assert {part for _, part in rows} == {f"{prefix}{r}" for r in range(modulus)}


def test_hash_matches_satisfies_hash_partition(hashed):
    conn, utf8 = hashed
    samples = {
        "int2": [0, -1, 32767, -32768],
        "int8": [0, -1, 2**63 - 1, -(2**63), 4242424242],
        "text": ["", "a", "twelve bytes", "thirteen byte"] + (["日本語", "é"] if utf8 else []),
        "uuid": [uuid.UUID("12345678-1234-5678-1234-567812345678")],
    }
    with conn.cursor() as cur:
        for typ, values in samples.items():
            parent = _parent(typ, 3)
            for value in values:
                for modulus in (1, 2, 5, 13, 1000):
                    remainder = Hash().shard_of(value, modulus)
                    cur.execute(
                        sql.SQL(
                            "SELECT satisfies_hash_partition(%s::regclass, %s, %s, CAST(%s AS {}))"
                        ).format(sql.SQL(typ)),
                        (parent, modulus, remainder, value),
                    )
                    assert cur.fetchone()[0], (typ, value, modulus, remainder)
                    cur.execute(
                        sql.SQL(
                            "SELECT satisfies_hash_partition(%s::regclass, %s, %s, CAST(%s AS {}))"
                        ).format(sql.SQL(typ)),
                        (parent, modulus, (remainder + 1) % modulus, value),
                    )
                    assert cur.fetchone()[0] == (modulus == 1)


def _remainders(conn, typ, values, modulus):
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT ord, r FROM unnest(%s::{}[]) WITH ORDINALITY AS v(k, ord), "
                "generate_series(0, %s - 1) r"
                " WHERE satisfies_hash_partition(%s::regclass, %s, r, k) ORDER BY ord"
            ).format(sql.SQL(typ)),
            (list(values), modulus, _parent(typ, 3), modulus),
        )
        return [r for _, r in cur.fetchall()]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50),
    modulus=st.integers(1, 40),
)
def test_hash_matches_postgres_for_any_bigint(hashed, values, modulus):
    conn, _ = hashed
    assert _remainders(conn, "int8", values, modulus) == [Hash().shard_of(v, modulus) for v in values]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")), max_size=30
    ),
    modulus=st.integers(1, 40),
)
def test_hash_matches_postgres_for_any_text(hashed, values, modulus):
    conn, utf8 = hashed
    if not utf8:
        values = [v for v in values if v.isascii()]
    assert _remainders(conn, "text", values, modulus) == [Hash().shard_of(v, modulus) for v in values]


def test_a_key_sequence_reads_from_toml_and_writes_back_equal():
    placement = Placement.from_toml(
        '[sharded.orders]\nkey = "id"\nfunction = "hash"\nsequence = "orders_id_seq"\n'
    )
    (table,) = placement.sharded
    assert table.sequence == "orders_id_seq"
    assert Placement.from_toml(placement.to_toml()) == placement
    with pytest.raises(ValueError, match="sequence must be"):
        Placement.from_toml('[sharded.orders]\nkey = "id"\nsequence = 3\n')
