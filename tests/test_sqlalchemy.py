"""The SQLAlchemy dialect ``postgresql+parallel_connection``: Core, ORM, reflection, pandas.

Every answer is compared with the same statement through a plain
``postgresql+psycopg2`` engine on the reference database (one database holding
every row). Tables a test makes are dropped again, on every server.
"""

from __future__ import annotations

import urllib.parse
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pandas
import psycopg2
import pytest
import sqlalchemy as sa
from conftest import first_rows, port_of, run_on_all
from sqlalchemy import orm

import parallel_connection
from parallel_connection import ParallelConnection, ParallelCursor
from parallel_connection.commit import TABLE as DECISIONS
from parallel_connection.placement import Modulo, Placement

NOTES = "sqla_notes"  # declared sharded on customer_id; made and dropped by the tests
LOOKUP = "sqla_lookup"  # declared copied
UNDECLARED = "sqla_undeclared"

PLACEMENT = Placement(
    sharded={"orders": ("customer_id", "modulo"), NOTES: ("customer_id", "modulo")},
    copied=["customers", LOOKUP],
)


def shard_url(dsns: list[str], **query: str) -> str:
    """The dialect's URL: each shard a ``shard`` query parameter, in shard order."""
    pairs = [("shard", dsn) for dsn in dsns] + list(query.items())
    return "postgresql+parallel_connection:///?" + urllib.parse.urlencode(pairs)


@pytest.fixture(scope="module")
def engine(sample: Any) -> Iterator[sa.Engine]:
    eng = sa.create_engine(shard_url(sample.shard_dsns), connect_args={"placement": PLACEMENT})
    yield eng
    eng.dispose()


@pytest.fixture
def scratch(sample: Any) -> Iterator[None]:
    """The scratch tables are gone before and after the test, on every server."""
    servers = [*sample.shard_dsns, sample.reference_dsn]
    drop = f"DROP TABLE IF EXISTS {NOTES}, {LOOKUP}, {UNDECLARED}"
    run_on_all(servers, drop)
    yield
    run_on_all(servers, drop)


def rows(eng: sa.Engine, statement: Any, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with eng.connect() as conn:
        return [tuple(row) for row in conn.execute(statement, params or {})]


def on_each_shard(dsns: list[str], sql: str) -> list[list[tuple[Any, ...]]]:
    """Every row ``sql`` returns on each shard, on plain connections of its own."""
    out = []
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                out.append(cur.fetchall())
        finally:
            conn.close()
    return out


# -- connecting ---------------------------------------------------------------------


def test_url_names_each_shard_the_placement_file_and_connect_options(sample, tmp_path):
    path = tmp_path / "placement.toml"
    path.write_text(PLACEMENT.to_toml())
    url = shard_url(sample.shard_dsns, placement=str(path), statement_deadline="30", maxconn="2")
    user = psycopg2.extensions.parse_dsn(sample.shard_dsns[0]).get("user", "postgres")
    eng = sa.create_engine(url.replace(":///", f"://{user}@/"))  # a user for every shard
    try:
        with eng.connect() as conn:
            pdb = conn.connection.dbapi_connection
            assert isinstance(pdb, ParallelConnection)
            assert pdb.placement == PLACEMENT
            assert pdb.statement_deadline == 30.0
            assert pdb.connect_kwargs == {"user": user}
            assert [c.info.user for c in pdb.connections] == [user] * 3
            assert [int(s.port) for s in pdb.shards] == [port_of(d) for d in sample.shard_dsns]
            count = conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one()
    finally:
        eng.dispose()
    assert count == first_rows([sample.reference_dsn], "SELECT count(*) FROM orders")[0][0]


def test_connect_args_take_python_objects(sample):
    eng = sa.create_engine(
        "postgresql+parallel_connection://",
        connect_args={"dsns": sample.shard_dsns, "replicated_tables": ["customers"]},
    )
    try:
        with eng.connect() as conn:
            pdb = conn.connection.dbapi_connection
            assert isinstance(pdb, ParallelConnection)
            assert pdb.replicated_tables == frozenset({"customers"})
            # A copy is read once, not once per shard.
            assert conn.execute(sa.text("SELECT count(*) FROM customers")).scalar_one() == 5000
    finally:
        eng.dispose()


def test_url_without_shards_or_with_a_host_is_refused(sample):
    with pytest.raises(sa.exc.ArgumentError, match="several servers"):
        sa.create_engine("postgresql+parallel_connection://localhost/shop")
    for eng in (
        sa.create_engine("postgresql+parallel_connection://"),
        sa.create_engine(shard_url(sample.shard_dsns), connect_args={"dsns": sample.shard_dsns}),
    ):
        with pytest.raises(sa.exc.ArgumentError, match="shard="):
            eng.connect()
        eng.dispose()
    with pytest.raises(sa.exc.ArgumentError, match="not a number"):
        sa.create_engine(shard_url(sample.shard_dsns, statement_deadline="soon"))


# -- Core ---------------------------------------------------------------------------


def test_text_with_parameters_equals_the_reference(engine, reference_engine):
    sql = sa.text(
        "SELECT status, count(*), sum(amount) FROM orders WHERE customer_id < :top "
        "GROUP BY status ORDER BY status NULLS LAST"
    )
    got = rows(engine, sql, {"top": 2500})
    assert len(got) == 5
    assert got == rows(reference_engine, sql, {"top": 2500})


def test_select_over_a_reflected_table_equals_the_reference(engine, reference_engine):
    orders = sa.Table("orders", sa.MetaData(), autoload_with=engine)
    customers = sa.Table("customers", sa.MetaData(), autoload_with=engine)
    query = (
        sa.select(customers.c.country, sa.func.count(), sa.func.avg(orders.c.amount))
        .join(customers, customers.c.id == orders.c.customer_id)
        .where(orders.c.paid.is_(True))
        .group_by(customers.c.country)
        .order_by(customers.c.country.nulls_last())
    )
    got = rows(engine, query)
    assert got and got == rows(reference_engine, query)


def test_stream_results_streams_through_named_cursors(engine, reference_engine):
    query = sa.text("SELECT id, customer_id, ref, payload FROM orders ORDER BY id")
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=100).execute(query)
        cursor = result.cursor
        assert isinstance(cursor, ParallelCursor) and cursor.name is not None
        got = [tuple(row) for row in result]
        streamed = conn.execution_options(stream_results=True).execute(sa.text("SELECT id FROM orders"))
        partitions = [len(p) for p in streamed.partitions(700)]
    assert got == rows(reference_engine, query)
    assert partitions == [700] * (len(got) // 700) + [len(got) % 700]


def test_refused_statement_names_the_construct(engine):
    with engine.connect() as conn, pytest.raises(sa.exc.NotSupportedError) as caught:
        conn.execute(sa.text("SELECT id, random() FROM orders"))
    assert isinstance(caught.value.orig, parallel_connection.NotSupportedError)
    assert "random()" in str(caught.value)


def test_a_refusal_fails_the_transaction_so_nothing_before_it_commits(engine, scratch, sample):
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {NOTES} (customer_id int NOT NULL, body text)"))
    with engine.connect() as conn:
        conn.execute(sa.text(f"INSERT INTO {NOTES} VALUES (1, 'kept?'), (2, 'kept?')"))
        with pytest.raises(sa.exc.NotSupportedError):
            conn.execute(sa.text(f"UPDATE {NOTES} SET customer_id = customer_id + 1"))
        with pytest.raises(sa.exc.InternalError, match="aborted"):  # as one database refuses it
            conn.execute(sa.text(f"SELECT count(*) FROM {NOTES}"))
        conn.commit()  # rolls back, as COMMIT after an error does
    assert on_each_shard(sample.shard_dsns, f"SELECT count(*) FROM {NOTES}") == [[(0,)]] * 3


def test_isolation_level_and_autocommit_reach_every_shard(sample):
    eng = sa.create_engine(
        shard_url(sample.shard_dsns), connect_args={"placement": PLACEMENT}, isolation_level="REPEATABLE READ"
    )
    try:
        with eng.connect() as conn:
            pdb = conn.connection.dbapi_connection
            assert isinstance(pdb, ParallelConnection)
            conn.execute(sa.text("SELECT 1"))  # in a transaction: each shard shows its level
            with pdb.cursor(merge="union") as cur:
                cur.execute("SHOW transaction_isolation")
                assert cur.fetchall() == [("repeatable read",)] * 3
            assert conn.get_isolation_level() == "REPEATABLE READ"
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            pdb = conn.connection.dbapi_connection
            assert isinstance(pdb, ParallelConnection)
            assert pdb.autocommit and all(c.autocommit for c in pdb.connections)
        with eng.connect() as conn:  # given back to the pool reset
            assert not conn.connection.dbapi_connection.autocommit
    finally:
        eng.dispose()


def test_pool_pre_ping_replaces_a_connection_whose_shard_went_away(sample, reference_engine):
    eng = sa.create_engine(
        shard_url(sample.shard_dsns), connect_args={"placement": PLACEMENT}, pool_pre_ping=True, pool_size=1
    )
    try:
        with eng.connect() as conn:
            pdb = conn.connection.dbapi_connection
            assert isinstance(pdb, ParallelConnection)
            pid = pdb.connections[1].info.backend_pid
        run_on_all([sample.shard_dsns[1]], "SELECT pg_terminate_backend(%s)", (pid,))
        query = sa.text("SELECT count(*) FROM orders")
        with eng.connect() as conn:
            got = conn.execute(query).scalar_one()
            assert conn.connection.dbapi_connection.connections[1].info.backend_pid != pid
    finally:
        eng.dispose()
    assert got == rows(reference_engine, query)[0][0]


def test_sqlalchemy_two_phase_is_refused_with_the_way_out(engine):
    with engine.connect() as conn, pytest.raises(sa.exc.NotSupportedError, match="use begin"):
        conn.begin_twophase()


# -- ORM ----------------------------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]
    country: orm.Mapped[str | None]


class Order(Base):
    __tablename__ = "orders"
    id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, primary_key=True)
    customer_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("customers.id"))
    status: orm.Mapped[str | None]
    amount: orm.Mapped[Decimal | None] = orm.mapped_column(sa.Numeric(12, 2))
    customer: orm.Mapped[Customer] = orm.relationship()


class Note(Base):
    __tablename__ = NOTES
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=False)
    customer_id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    body: orm.Mapped[str]


def orm_rows(eng: sa.Engine, query: Any) -> list[tuple[Any, ...]]:
    with orm.Session(eng) as session:
        return [(o.id, o.customer_id, o.status, o.amount, o.customer.name) for o in session.scalars(query)]


def test_orm_reads_equal_the_reference(engine, reference_engine):
    query = (
        sa.select(Order)
        .where(Order.customer_id.in_([2920, 1543, 7, 8, 9]))
        .options(orm.joinedload(Order.customer))
        .order_by(Order.id)
    )
    got = orm_rows(engine, query)
    assert len({customer for _, customer, *_ in got}) > 1
    assert got == orm_rows(reference_engine, query)
    top = sa.select(Order.status, sa.func.sum(Order.amount)).group_by(Order.status).order_by(Order.status)
    with orm.Session(engine) as ours, orm.Session(reference_engine) as theirs:
        assert ours.execute(top).all() == theirs.execute(top).all()


def test_orm_writes_go_to_the_shard_of_their_key(engine, scratch, sample):
    Base.metadata.create_all(engine, tables=[Note.__table__])
    with orm.Session(engine) as session:
        session.add_all([Note(id=i, customer_id=c, body=f"note {i}") for i, c in enumerate(range(10, 20))])
        session.commit()
        note = session.get(Note, (3, 13))
        assert note is not None
        note.body = "changed"
        session.delete(session.get(Note, (4, 14)))
        session.commit()
        assert session.scalars(sa.select(Note.body).where(Note.customer_id == 13)).all() == ["changed"]
    held = on_each_shard(sample.shard_dsns, f"SELECT customer_id FROM {NOTES} ORDER BY 1")
    for shard, keys in enumerate(held):
        assert all(Modulo().shard_of(key, 3) == shard for (key,) in keys)
    assert sorted(key for keys in held for (key,) in keys) == [c for c in range(10, 20) if c != 14]


# -- reflection ---------------------------------------------------------------------


def reflected(eng: sa.Engine, table: str) -> dict[str, Any]:
    inspector = sa.inspect(eng)
    return {
        "columns": [{**c, "type": repr(c["type"])} for c in inspector.get_columns(table)],
        "pk": inspector.get_pk_constraint(table),
        "fks": inspector.get_foreign_keys(table),
        "indexes": inspector.get_indexes(table),
        "unique": inspector.get_unique_constraints(table),
        "checks": inspector.get_check_constraints(table),
        "comment": inspector.get_table_comment(table),
    }


def test_reflection_equals_the_reference(engine, reference_engine):
    for table in ("orders", "customers"):
        assert reflected(engine, table) == reflected(reference_engine, table)
    ours = sa.Table("orders", sa.MetaData(), autoload_with=engine)
    theirs = sa.Table("orders", sa.MetaData(), autoload_with=reference_engine)
    assert [(c.name, repr(c.type), c.nullable, c.primary_key) for c in ours.columns] == [
        (c.name, repr(c.type), c.nullable, c.primary_key) for c in theirs.columns
    ]


def test_reflection_of_constraints_comments_and_views_equals_the_reference(
    engine, reference_engine, scratch, sample
):
    ddl = f"""
        CREATE TABLE {LOOKUP} (
            code text PRIMARY KEY,
            customer_id int NOT NULL REFERENCES customers (id),
            rank int DEFAULT 1 CHECK (rank > 0),
            label varchar(20) UNIQUE
        );
        CREATE INDEX {LOOKUP}_rank ON {LOOKUP} (rank DESC);
        COMMENT ON TABLE {LOOKUP} IS 'codes';
        COMMENT ON COLUMN {LOOKUP}.rank IS 'lower first';
        CREATE VIEW {LOOKUP}_view AS SELECT code, rank FROM {LOOKUP}
    """
    run_on_all([*sample.shard_dsns, sample.reference_dsn], ddl)
    try:
        assert reflected(engine, LOOKUP) == reflected(reference_engine, LOOKUP)
        ours, theirs = sa.inspect(engine), sa.inspect(reference_engine)
        assert ours.get_view_names() == theirs.get_view_names()
        assert ours.get_view_definition(f"{LOOKUP}_view") == theirs.get_view_definition(f"{LOOKUP}_view")
    finally:
        run_on_all([*sample.shard_dsns, sample.reference_dsn], f"DROP VIEW IF EXISTS {LOOKUP}_view")


def test_each_table_is_listed_once_and_the_commit_decisions_are_not_listed(engine, reference_engine, scratch):
    with engine.begin() as conn:  # a write on several shards: two-phase, a decision recorded
        conn.execute(sa.text(f"CREATE TABLE {NOTES} (customer_id int NOT NULL, body text)"))
        conn.execute(sa.text(f"INSERT INTO {NOTES} VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    with engine.connect() as conn:
        decided = conn.execute(
            sa.text("SELECT count(*) FROM pg_class WHERE relname = :t"), {"t": DECISIONS}
        ).scalar_one()
    names = sa.inspect(engine).get_table_names()
    assert decided == 1  # the decision table exists (on the first shard) ...
    assert DECISIONS not in names  # ... but is the library's, not one database's
    assert len(names) == len(set(names))
    assert {"orders", "customers", NOTES} <= set(names)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    assert {"orders", "customers", NOTES} <= set(metadata.tables) and DECISIONS not in metadata.tables
    assert set(names) - {NOTES} == set(sa.inspect(reference_engine).get_table_names())


# -- pandas -------------------------------------------------------------------------

SQL = "SELECT id, customer_id, status, amount, paid, ordered_at, ref FROM orders WHERE id <= 700 ORDER BY id"


def test_read_sql_equals_the_reference_frame_without_a_warning(engine, reference_engine):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pandas.read_sql(SQL, engine)
        with_params = pandas.read_sql(
            sa.text("SELECT id, amount FROM orders WHERE customer_id = :c ORDER BY id"),
            engine,
            params={"c": 2920},
            coerce_float=False,
        )
        table = pandas.read_sql_table("customers", engine).sort_values("id", ignore_index=True)
        chunks = list(pandas.read_sql(SQL, engine, chunksize=250))
    assert len(got) == 700
    pandas.testing.assert_frame_equal(got, pandas.read_sql(SQL, reference_engine))
    pandas.testing.assert_frame_equal(
        with_params,
        pandas.read_sql(
            sa.text("SELECT id, amount FROM orders WHERE customer_id = :c ORDER BY id"),
            reference_engine,
            params={"c": 2920},
            coerce_float=False,
        ),
    )
    pandas.testing.assert_frame_equal(
        table, pandas.read_sql_table("customers", reference_engine).sort_values("id", ignore_index=True)
    )
    assert [len(c) for c in chunks] == [250, 250, 200]
    pandas.testing.assert_frame_equal(pandas.concat(chunks, ignore_index=True), got)


def test_to_sql_into_a_sharded_table_sends_each_row_to_its_shard(engine, scratch, sample):
    frame = pandas.DataFrame({"customer_id": range(100, 130), "body": [f"n{i}" for i in range(30)]})
    assert frame.to_sql(NOTES, engine, index=False) == 30
    held = on_each_shard(sample.shard_dsns, f"SELECT customer_id FROM {NOTES}")
    for shard, keys in enumerate(held):
        assert keys and all(Modulo().shard_of(key, 3) == shard for (key,) in keys)
    back = pandas.read_sql(f"SELECT customer_id, body FROM {NOTES} ORDER BY customer_id", engine)
    pandas.testing.assert_frame_equal(back, frame)
    assert frame.to_sql(NOTES, engine, index=False, if_exists="append") == 30
    assert pandas.read_sql(f"SELECT count(*) AS n FROM {NOTES}", engine)["n"].tolist() == [60]


def test_to_sql_into_a_copied_table_writes_every_copy(engine, scratch, sample):
    frame = pandas.DataFrame({"code": ["a", "b", "c"], "rank": [3, 1, 2]})
    assert frame.to_sql(LOOKUP, engine, index=False) == 3
    assert (
        on_each_shard(sample.shard_dsns, f"SELECT code, rank FROM {LOOKUP} ORDER BY code")
        == [[("a", 3), ("b", 1), ("c", 2)]] * 3
    )
    pandas.testing.assert_frame_equal(pandas.read_sql(f"SELECT * FROM {LOOKUP} ORDER BY code", engine), frame)


def test_to_sql_into_an_undeclared_table_is_refused_and_leaves_no_table(engine, scratch, sample):
    frame = pandas.DataFrame({"customer_id": [1, 2, 3], "body": ["a", "b", "c"]})
    with pytest.raises(Exception, match="not in the placement") as caught:
        frame.to_sql(UNDECLARED, engine, index=False)
    refusal: BaseException | None = caught.value
    while refusal is not None and not isinstance(refusal, parallel_connection.NotSupportedError):
        refusal = refusal.__cause__ or refusal.__context__ or getattr(refusal, "orig", None)
    assert refusal is not None, "the refusal is the library's NotSupportedError"
    assert (
        on_each_shard(sample.shard_dsns, f"SELECT count(*) FROM pg_class WHERE relname = '{UNDECLARED}'")
        == [[(0,)]] * 3
    )
