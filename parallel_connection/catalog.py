"""The shards' catalog facts the planner needs, read from one shard in one round trip.

:func:`read_catalog` reads one shard's :class:`Catalog`, :func:`combine` makes
the planner's one value out of every shard's, and :func:`read_stamp` (or a
:class:`StampReader`, cheaper) tells whether a shard's catalog changed since.
Nothing here fans out: the caller runs these on every shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "SETTINGS",
    "STAMP_SQL",
    "Catalog",
    "CollationFact",
    "Column",
    "Relation",
    "StampReader",
    "TypeFact",
    "catalog_query",
    "combine",
    "combine_stamps",
    "read_catalog",
    "read_stamp",
    "schema_differences",
    "settings_differences",
]

SETTINGS = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "search_path",
    "extra_float_digits",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "standard_conforming_strings",
    "bytea_output",
    "server_encoding",
    "client_encoding",
)
"""The settings that change an answer's text or meaning, compared between shards."""

_KINDS = {
    "r": "table",
    "p": "partitioned",
    "v": "view",
    "m": "matview",
    "f": "foreign",
    "S": "sequence",
    "c": "composite",
    "i": "index",
    "I": "partitioned_index",
    "t": "toast",
}
_TYPE_KINDS = {
    "b": "base",
    "c": "composite",
    "d": "domain",
    "e": "enum",
    "r": "range",
    "m": "multirange",
    "p": "pseudo",
}
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class Column:
    """A relation's column."""

    name: str
    type_oid: int
    type_name: str
    """``format_type(atttypid, atttypmod)``."""
    collation: str | None
    """The column's collation unless it orders like the database default or C (a domain's counts too)."""
    deterministic: bool
    """False for a nondeterministic collation (a case-insensitive ICU one, say)."""
    declared_collation: str | None = None
    """The column's collation whatever it is (None: the database default, or a type without one)."""
    not_null: bool = False
    """Declared NOT NULL (a primary key's columns are)."""
    default: str | None = None
    """The default's SQL text, ``"identity"`` for an identity column, None without one."""


@dataclass(frozen=True)
class Relation:
    """A table, view, sequence, index, ... (anything in ``pg_class``)."""

    schema: str
    name: str
    kind: str
    """``table``, ``partitioned``, ``view``, ``matview``, ``foreign``, ``sequence``, ``index``, ..."""
    columns: tuple[Column, ...]
    """In column order; () for relations in system schemas and for indexes."""
    view_sql: str | None
    """``pg_get_viewdef`` of a view outside the system schemas (a matview is stored: None)."""
    rows: float = -1
    """The planner's estimate of its rows (``reltuples``; summed over the shards; -1: unknown)."""


@dataclass(frozen=True)
class TypeFact:
    """A type outside the system schemas (array types left out)."""

    schema: str
    name: str
    kind: str
    """``domain``, ``enum``, ``composite`` (a table's row type too), ``range``, ``multirange``, ``base``..."""
    base_oid: int | None
    """A domain's base type, a range's subtype."""
    collation: str | None
    """Like :attr:`Column.collation`."""
    deterministic: bool
    labels: tuple[str, ...] = ()
    """An enum's labels in their sort order."""


@dataclass(frozen=True)
class CollationFact:
    """A collation usable in this database's encoding."""

    name: str
    schema: str
    provider: str
    """``c`` (libc), ``i`` (ICU) or ``d`` (the database default)."""
    deterministic: bool
    is_c: bool
    """Orders and compares by code point: C, POSIX and libc collations on the C locale (ucs_basic)."""


@dataclass(frozen=True, eq=False)
class Catalog:
    """One shard's catalog facts (or every shard's, through :func:`combine`)."""

    search_path: tuple[str, ...]
    """``current_schemas(true)``: the schemas a bare relation name is looked up in, in order."""
    relations: Mapping[tuple[str, str], Relation]
    """Every relation visible to the session (other sessions' temporary ones and pg_toast's left out)."""
    types: Mapping[tuple[str, str], TypeFact]
    collations: Mapping[str, CollationFact]
    """By name; of several with one name, the first on the search path (else pg_catalog's)."""
    aggregates: frozenset[str]
    """Names of every aggregate and window function, all schemas."""
    user_aggregates: frozenset[tuple[str, str]]
    """(schema, name) of the aggregate and window functions outside pg_catalog."""
    functions: frozenset[str]
    volatile: frozenset[str]
    text_order_c: bool
    """The database's collation is C or POSIX with the libc provider: text orders by code point."""
    settings: Mapping[str, str]
    stamp: tuple[int, ...]
    """What :func:`read_stamp` returned in the same snapshot."""
    temp_schema: str | None = None
    """This session's ``pg_temp_N`` once it has one (what ``pg_temp.`` names)."""
    system_types: frozenset[tuple[str, str]] = frozenset()
    """(schema, name) of the types in pg_catalog and information_schema (they shadow user types)."""
    qualified_collations: Mapping[tuple[str, str], CollationFact] = field(default_factory=dict)
    """Every collation by (schema, name)."""
    snapshot: str | None = None
    """The snapshot the catalog was read in, when the session held no transaction ID (see StampReader)."""

    def resolve(self, schema: str | None, name: str) -> Relation | None:
        """The relation a (possibly schema-qualified) name means, as PostgreSQL looks it up.

        Names are as the catalog stores them: the parser has already folded unquoted ones.
        """
        if schema is not None:
            schema = self._real_schema(schema)
            return None if schema is None else self.relations.get((schema, name))
        for s in self._path(with_temp=True):
            relation = self.relations.get((s, name))
            if relation is not None:
                return relation
        return None

    def resolve_type(self, schema: str | None, name: str) -> TypeFact | None:
        """The user-defined type a name means (None: unknown, or a system type)."""
        if schema is not None:
            schema = self._real_schema(schema)
            return None if schema is None else self.types.get((schema, name))
        for s in self._path(with_temp=True):
            if (s, name) in self.system_types:
                return None
            fact = self.types.get((s, name))
            if fact is not None:
                return fact
        return None

    def resolve_collation(self, schema: str | None, name: str) -> CollationFact | None:
        """The collation a name means (the temporary schema is never searched for one)."""
        if schema is not None:
            return self.qualified_collations.get((schema, name))
        for s in self._path(with_temp=False):
            fact = self.qualified_collations.get((s, name))
            if fact is not None:
                return fact
        return None

    def is_system(self, schema: str) -> bool:
        """pg_catalog, information_schema and the pg_toast schemas."""
        return schema in _SYSTEM_SCHEMAS or schema.startswith("pg_toast")

    def qualified(self, schema: str | None, name: str) -> tuple[str, str] | None:
        """The (schema, name) a relation name resolves to."""
        relation = self.resolve(schema, name)
        return None if relation is None else (relation.schema, relation.name)

    def _real_schema(self, schema: str) -> str | None:
        return self.temp_schema if schema == "pg_temp" else schema

    def _path(self, *, with_temp: bool) -> list[str]:
        return _effective_path(self.search_path, self.temp_schema, with_temp=with_temp)


def _effective_path(search_path: Sequence[str], temp_schema: str | None, *, with_temp: bool) -> list[str]:
    """The schemas searched in order: pg_catalog first unless listed, the temporary schema before it.

    Only relations and types are looked up in the temporary schema, never functions or collations.
    """
    path = [s for s in search_path if with_temp or s != temp_schema]
    if "pg_catalog" not in path:
        path.insert(0, "pg_catalog")
    if with_temp and temp_schema is not None and temp_schema not in path:
        path.insert(0, temp_schema)
    return path


# The stamp: for each catalog holding a fact, over its user rows (OIDs from
# 16384 up; built-in ones never change), the row count and the XOR of a 64-bit
# hash of (row key, xmin). Creating, altering or dropping anything inserts,
# updates or deletes such rows, and every new row version has a new xmin.
# Rows of other sessions' temporary objects are left out: they are invisible
# here, and counting them would change the stamp at each of their temp tables.
_OTHER_TEMP_RELATIONS = (
    "ARRAY(SELECT oid FROM pg_catalog.pg_class WHERE oid >= 16384 AND relpersistence = 't'"
    " AND pg_is_other_temp_schema(relnamespace))"
)
_OTHER_TEMP_TYPES = (
    "ARRAY(SELECT oid FROM pg_catalog.pg_type WHERE oid >= 16384 AND pg_is_other_temp_schema(typnamespace))"
)
_STAMPED = (
    ("pg_class", "oid", "oid >= 16384 AND NOT pg_is_other_temp_schema(relnamespace)"),
    ("pg_type", "oid", "oid >= 16384 AND NOT pg_is_other_temp_schema(typnamespace)"),
    ("pg_proc", "oid", "oid >= 16384 AND NOT pg_is_other_temp_schema(pronamespace)"),
    ("pg_collation", "oid", "oid >= 16384 AND NOT pg_is_other_temp_schema(collnamespace)"),
    ("pg_namespace", "oid", "oid >= 16384 AND NOT pg_is_other_temp_schema(oid)"),
    (
        "pg_attribute",
        "attrelid::int8 * 4096 + attnum",
        f"attrelid >= 16384 AND attnum > 0 AND attrelid <> ALL({_OTHER_TEMP_RELATIONS})",
    ),
    ("pg_rewrite", "oid", f"oid >= 16384 AND ev_class <> ALL({_OTHER_TEMP_RELATIONS})"),
    ("pg_enum", "oid", f"oid >= 16384 AND enumtypid <> ALL({_OTHER_TEMP_TYPES})"),
)
_CATALOG_STAMP = " || ".join(
    f"(SELECT ARRAY[count(*), coalesce(bit_xor(hashtextextended(xmin::text, ({key})::int8)), 0)]"
    f" FROM pg_catalog.{table} WHERE {where})"
    for table, key, where in _STAMPED
)
_SETTINGS_STAMP = "ARRAY[hashtextextended(concat_ws(',', {}, current_schemas(true)::text), 0)]".format(
    ", ".join(f"current_setting('{s}')" for s in SETTINGS)
)
_SNAPSHOT = (
    "pg_current_snapshot()::text, pg_current_xact_id_if_assigned() IS NULL AND NOT pg_is_in_recovery()"
)

STAMP_SQL = f"SELECT {_CATALOG_STAMP} || {_SETTINGS_STAMP}"
"""One row, one bigint[]: the catalogs' counts and hashes, then a hash of the settings and search path."""

_CHECK_SQL = f"SELECT {_SNAPSHOT}, {_SETTINGS_STAMP}"
_SCAN_SQL = f"SELECT {_SNAPSHOT}, {_CATALOG_STAMP}, {_SETTINGS_STAMP}"


class StampReader:
    """One connection's :func:`read_stamp`, scanning the catalogs only when they may have changed.

    Two statements under the same snapshot see the same catalog rows, and a
    catalog change needs a transaction ID, whose end (commit or abort) changes
    every later snapshot. So while the connection holds no transaction ID of
    its own (a snapshot never lists those) and its snapshot is the last scan's,
    that scan's answer stands: the check costs about a ``SELECT 1``. Otherwise
    a second statement scans. Standbys' snapshots are never compared. One
    reader per connection.
    """

    def __init__(self) -> None:
        self._snapshot: str | None = None
        self._catalog: tuple[int, ...] = ()
        self.scans = 0
        """How many times the catalogs were scanned."""

    def read(self, cursor: Any) -> tuple[int, ...]:
        """The connection's stamp, equal to what :func:`read_stamp` would return."""
        if self._snapshot is not None:
            cursor.execute(_CHECK_SQL)
            snapshot, quiet, settings = cursor.fetchone()
            if quiet and snapshot == self._snapshot:
                return (*self._catalog, *settings)
        cursor.execute(_SCAN_SQL)
        snapshot, quiet, catalog, settings = cursor.fetchone()
        self.scans += 1
        self._snapshot = snapshot if quiet else None
        self._catalog = tuple(catalog)
        return (*self._catalog, *settings)

    def prime(self, catalog: Catalog) -> None:
        """Take a catalog just read on this connection (not a combined one) as the last scan."""
        if catalog.snapshot is not None:
            self._snapshot = catalog.snapshot
            self._catalog = catalog.stamp[:-1]  # without the settings' hash, read every time


_CATALOG = """
WITH nsp AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE NOT pg_is_other_temp_schema(oid)
), usr AS (
    SELECT oid FROM nsp
     WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND NOT starts_with(nspname::text, 'pg_toast')
)
SELECT json_build_object(
    'search_path', current_schemas(true),
    'temp_schema', pg_my_temp_schema()::int8,
    'settings', json_build_object(%(settings)s),
    'text_order_c', (SELECT datcollate IN ('C', 'POSIX')
                            AND coalesce(to_jsonb(d)->>'datlocprovider', 'c') = 'c'
                       FROM pg_catalog.pg_database d WHERE datname = current_database()),
    'namespaces', (SELECT json_build_array(array_agg(oid::int8), array_agg(nspname)) FROM nsp),
    'relations', (
        SELECT json_build_array(
                   array_agg(oid::int8), array_agg(relnamespace::int8), array_agg(relname),
                   array_agg(relkind),
                   array_agg(CASE WHEN relkind = 'v' AND relnamespace IN (SELECT oid FROM usr)
                                  THEN pg_get_viewdef(oid) END),
                   array_agg(reltuples))
          FROM pg_catalog.pg_class
         WHERE relnamespace IN (SELECT oid FROM nsp WHERE NOT starts_with(nspname::text, 'pg_toast'))),
    'columns', (
        SELECT json_build_array(
                   array_agg(a.attrelid::int8), array_agg(a.attnum), array_agg(a.attname),
                   array_agg(a.atttypid::int8), array_agg(format_type(a.atttypid, a.atttypmod)),
                   array_agg(a.attcollation::int8), array_agg(a.attnotnull),
                   array_agg(CASE WHEN a.attidentity <> '' THEN 'identity'
                                  WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END))
          FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
           AND c.relnamespace IN (SELECT oid FROM usr)),
    'types', (
        SELECT json_build_array(
                   array_agg(t.typnamespace::int8), array_agg(t.typname), array_agg(t.typtype),
                   array_agg(CASE t.typtype WHEN 'd' THEN t.typbasetype::int8
                                            WHEN 'r' THEN (SELECT rngsubtype::int8 FROM pg_catalog.pg_range
                                                            WHERE rngtypid = t.oid) END),
                   array_agg(t.typcollation::int8),
                   array_agg((SELECT json_agg(enumlabel ORDER BY enumsortorder) FROM pg_catalog.pg_enum
                               WHERE enumtypid = t.oid)))
          FROM pg_catalog.pg_type t
         WHERE t.typnamespace IN (SELECT oid FROM usr) AND NOT (t.typcategory = 'A' AND t.typelem <> 0)),
    'system_types', (
        SELECT json_build_array(array_agg(typnamespace::int8), array_agg(typname))
          FROM pg_catalog.pg_type
         WHERE typnamespace IN (SELECT oid FROM nsp WHERE nspname IN ('pg_catalog', 'information_schema'))),
    'collations', (
        SELECT json_build_array(
                   array_agg(oid::int8), array_agg(collnamespace::int8), array_agg(collname),
                   array_agg(collprovider), array_agg(collisdeterministic),
                   array_agg(collprovider = 'c' AND collcollate IN ('C', 'POSIX')))
          FROM pg_catalog.pg_collation
         WHERE collencoding IN (-1, pg_char_to_encoding(current_setting('server_encoding')))
           AND collnamespace IN (SELECT oid FROM nsp)),
    'functions', (
        SELECT json_build_array(
                   array_agg(proname), array_agg(proname) FILTER (WHERE prokind IN ('a', 'w')),
                   array_agg(proname) FILTER (WHERE provolatile = 'v'),
                   array_agg(pronamespace::int8) FILTER (WHERE prokind IN ('a', 'w')
                                                          AND pronamespace <> 'pg_catalog'::regnamespace),
                   array_agg(proname) FILTER (WHERE prokind IN ('a', 'w')
                                                AND pronamespace <> 'pg_catalog'::regnamespace))
          FROM pg_catalog.pg_proc
         WHERE pronamespace IN (SELECT oid FROM nsp)),
    'snapshot', CASE WHEN pg_current_xact_id_if_assigned() IS NULL AND NOT pg_is_in_recovery()
                     THEN pg_current_snapshot()::text END,
    'stamp', %(stamp)s
)::text
"""


def catalog_query() -> str:
    """The one SELECT that reads a shard's catalog facts: one row, one json text."""
    settings = ", ".join(f"'{s}', current_setting('{s}')" for s in SETTINGS)
    return _CATALOG % {"settings": settings, "stamp": f"{_CATALOG_STAMP} || {_SETTINGS_STAMP}"}


_QUERY = catalog_query()


def read_catalog(cursor: Any) -> Catalog:
    """One shard's catalog facts, read in one round trip in the cursor's transaction."""
    cursor.execute(_QUERY)
    row = cursor.fetchone()
    return _build(json.loads(row[0]))


def read_stamp(cursor: Any) -> tuple[int, ...]:
    """A value that changes whenever a catalog fact of the shard (or one of its settings) does.

    Like any query on the catalogs, it sees them as of the statement's snapshot: in a
    REPEATABLE READ transaction, as of the transaction's first statement.
    """
    cursor.execute(STAMP_SQL)
    return tuple(cursor.fetchone()[0])


def combine_stamps(stamps: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """Every shard's stamp as one, the way :func:`combine` makes :attr:`Catalog.stamp`."""
    return tuple(x for stamp in stamps for x in stamp)


def _rows(columns: list[list[Any]] | None) -> Iterable[tuple[Any, ...]]:
    """The rows of a section sent as one array per column (array_agg of no rows is null)."""
    if not columns or columns[0] is None:
        return ()
    return zip(*columns, strict=True)


_NO_COLLATION = (0, 100)


def _build(doc: dict[str, Any]) -> Catalog:
    schemas: dict[int, str] = dict(_rows(doc["namespaces"]))
    qualified: dict[tuple[str, str], CollationFact] = {}
    by_oid: dict[int, CollationFact] = {}
    for oid, schema, name, provider, deterministic, is_c in _rows(doc["collations"]):
        fact = CollationFact(name, schemas[schema], provider, deterministic, is_c)
        qualified[fact.schema, name] = by_oid[oid] = fact

    def collated(oid: int) -> tuple[str | None, str | None, bool]:
        """(collation unless it orders like the default or C, declared collation, deterministic)."""
        fact = by_oid.get(oid) if oid not in _NO_COLLATION else None
        if fact is None:
            return None, None, True
        return (None if fact.is_c else fact.name), fact.name, fact.deterministic

    columns: dict[int, list[tuple[int, Column]]] = {}
    for relid, attnum, name, type_oid, type_name, coll, not_null, default in _rows(doc["columns"]):
        collation, declared, deterministic = collated(coll)
        column = Column(
            name, type_oid, type_name, collation, deterministic, declared, bool(not_null), default
        )
        columns.setdefault(relid, []).append((attnum, column))
    relations: dict[tuple[str, str], Relation] = {}
    for oid, schema, name, relkind, view_sql, rows in _rows(doc["relations"]):
        cols = tuple(column for _, column in sorted(columns.get(oid, ()), key=lambda pair: pair[0]))
        relations[schemas[schema], name] = Relation(
            schemas[schema], name, _KINDS.get(relkind, relkind), cols, view_sql, float(rows)
        )
    types: dict[tuple[str, str], TypeFact] = {}
    for schema, name, typtype, base, coll, labels in _rows(doc["types"]):
        collation, _, deterministic = collated(coll)
        types[schemas[schema], name] = TypeFact(
            schemas[schema],
            name,
            _TYPE_KINDS.get(typtype, typtype),
            base,
            collation,
            deterministic,
            tuple(labels or ()),
        )
    names, aggregates, volatile, agg_schemas, agg_names = doc["functions"]
    search_path = tuple(doc["search_path"])
    temp_schema = schemas.get(doc["temp_schema"])
    return Catalog(
        search_path=search_path,
        relations=MappingProxyType(relations),
        types=MappingProxyType(types),
        collations=MappingProxyType(_by_name(qualified, search_path, temp_schema)),
        aggregates=frozenset(aggregates or ()),
        user_aggregates=frozenset((schemas[s], n) for s, n in _rows([agg_schemas, agg_names])),
        functions=frozenset(names or ()),
        volatile=frozenset(volatile or ()),
        text_order_c=bool(doc["text_order_c"]),
        settings=MappingProxyType(dict(doc["settings"])),
        stamp=tuple(int(x) for x in doc["stamp"]),
        temp_schema=temp_schema,
        system_types=frozenset((schemas[s], n) for s, n in _rows(doc["system_types"])),
        qualified_collations=MappingProxyType(qualified),
        snapshot=doc["snapshot"],
    )


def _by_name(
    qualified: Mapping[tuple[str, str], CollationFact], search_path: Sequence[str], temp_schema: str | None
) -> dict[str, CollationFact]:
    """Collations by bare name: the one a bare name finds, else any (a later one on the path, say)."""
    path = _effective_path(search_path, temp_schema, with_temp=False)
    rank = {schema: len(path) - i for i, schema in enumerate(path)}
    by_name: dict[str, CollationFact] = {}
    for (_, name), fact in sorted(qualified.items(), key=lambda item: rank.get(item[0][0], 0)):
        by_name[name] = fact
    return by_name


def _check_shards(catalogs: Sequence[Catalog], shard_names: Sequence[str]) -> None:
    if not catalogs:
        raise ValueError("no shard catalogs to combine")
    if len(catalogs) != len(shard_names):
        raise ValueError(f"{len(catalogs)} shard catalogs but {len(shard_names)} shard names")


def combine(catalogs: Sequence[Catalog], shard_names: Sequence[str]) -> Catalog:
    """The planner's one catalog over every shard.

    Relations, types, search path and settings come from the first shard (the
    schema is assumed equal everywhere: :func:`schema_differences` and
    :func:`settings_differences` say where it is not); a column or type is
    collated or nondeterministic if so on any shard; names are unioned;
    text orders by code point only if it does on every shard.
    """
    _check_shards(catalogs, shard_names)
    first = catalogs[0]
    relations = {
        key: _combine_relation(rel, [c.relations.get(key) for c in catalogs[1:]])
        for key, rel in first.relations.items()
    }
    types = {
        key: _combine_type(fact, [c.types.get(key) for c in catalogs[1:]])
        for key, fact in first.types.items()
    }
    qualified: dict[tuple[str, str], CollationFact] = {}
    for catalog in catalogs:
        for key, fact in catalog.qualified_collations.items():
            seen = qualified.get(key)
            qualified[key] = (
                fact
                if seen is None
                else replace(
                    seen,
                    deterministic=seen.deterministic and fact.deterministic,
                    is_c=seen.is_c and fact.is_c,
                )
            )
    return Catalog(
        search_path=first.search_path,
        relations=MappingProxyType(relations),
        types=MappingProxyType(types),
        collations=MappingProxyType(_by_name(qualified, first.search_path, first.temp_schema)),
        aggregates=frozenset().union(*(c.aggregates for c in catalogs)),
        user_aggregates=frozenset().union(*(c.user_aggregates for c in catalogs)),
        functions=frozenset().union(*(c.functions for c in catalogs)),
        volatile=frozenset().union(*(c.volatile for c in catalogs)),
        text_order_c=all(c.text_order_c for c in catalogs),
        settings=first.settings,
        stamp=combine_stamps(c.stamp for c in catalogs),
        temp_schema=first.temp_schema,
        system_types=frozenset().union(*(c.system_types for c in catalogs)),
        qualified_collations=MappingProxyType(qualified),
    )


def _combine_relation(relation: Relation, others: Sequence[Relation | None]) -> Relation:
    if not relation.columns:
        return relation
    by_name = [{col.name: col for col in other.columns} for other in others if other is not None]
    columns = []
    for col in relation.columns:
        same = [col, *(cols[col.name] for cols in by_name if col.name in cols)]
        columns.append(
            replace(
                col,
                collation=next((c.collation for c in same if c.collation is not None), None),
                deterministic=all(c.deterministic for c in same),
                declared_collation=next(
                    (c.declared_collation for c in same if c.declared_collation is not None), None
                ),
                not_null=all(c.not_null for c in same),
                default=next((c.default for c in same if c.default is not None), None),
            )
        )
    estimates = [relation.rows, *(o.rows for o in others if o is not None)]
    rows = sum(estimates) if min(estimates) >= 0 else -1
    return replace(relation, columns=tuple(columns), rows=rows)


def _combine_type(fact: TypeFact, others: Sequence[TypeFact | None]) -> TypeFact:
    same = [fact, *(o for o in others if o is not None)]
    return replace(
        fact,
        collation=next((f.collation for f in same if f.collation is not None), None),
        deterministic=all(f.deterministic for f in same),
    )


def _shards(indexes: Sequence[int], shard_names: Sequence[str]) -> str:
    named = [f"{i} ({shard_names[i]})" for i in indexes]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return ("shard " if len(named) == 1 else "shards ") + listed


def _differences(
    what: str, values: Sequence[str | None], shard_names: Sequence[str], show: Callable[[str], str] = str
) -> str | None:
    """'<what> is <a> on shard 0 (...) but <b> on shard 2 (...)', or None when every shard agrees."""
    groups: dict[str | None, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    if len(groups) < 2:
        return None
    first, *others = (
        f"{'missing' if value is None else show(value)} on {_shards(indexes, shard_names)}"
        for value, indexes in groups.items()
    )
    return f"{what} is {first} but {', '.join(others)}"


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def settings_differences(catalogs: Sequence[Catalog], shard_names: Sequence[str]) -> list[str]:
    """One message per setting whose value differs between shards, naming the shards and their values."""
    _check_shards(catalogs, shard_names)
    names = sorted({name for c in catalogs for name in c.settings}, key=_setting_order)
    messages = []
    for name in names:
        message = _differences(name, [c.settings.get(name) for c in catalogs], shard_names, _quoted)
        if message is not None:
            messages.append(message)
    return messages


def _setting_order(name: str) -> tuple[int, str]:
    return (SETTINGS.index(name) if name in SETTINGS else len(SETTINGS), name)


def schema_differences(catalogs: Sequence[Catalog], shard_names: Sequence[str]) -> list[str]:
    """One message per relation outside the system schemas missing on a shard or with other columns."""
    _check_shards(catalogs, shard_names)
    keys = sorted(
        {key for c in catalogs for key, rel in c.relations.items() if rel.columns and not c.is_system(key[0])}
    )
    temp = {c.temp_schema for c in catalogs}
    messages = []
    for schema, name in keys:
        if schema in temp:
            continue
        relations = [c.relations.get((schema, name)) for c in catalogs]
        shape = [None if r is None else _shape(r) for r in relations]
        message = _differences(f"{schema}.{name}", shape, shard_names)
        if message is not None:
            messages.append(message)
    return messages


def _shape(relation: Relation) -> str:
    columns = ", ".join(
        f"{c.name} {c.type_name}" + (f' COLLATE "{c.declared_collation}"' if c.declared_collation else "")
        for c in relation.columns
    )
    return f"{relation.kind} ({columns})"
