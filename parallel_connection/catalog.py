"""The shards' catalog facts the planner needs, read from one shard in one round trip.

:func:`read_catalog` reads one shard's :class:`Catalog`, :func:`combine` makes
the planner's one value out of every shard's, and :func:`read_stamp` tells
cheaply whether a shard's catalog changed since. Nothing here fans out: the
caller runs these on every shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class Relation:
    """A table, view, sequence, index, ... (anything in ``pg_class``)."""

    schema: str
    name: str
    kind: str
    """``table``, ``partitioned``, ``view``, ``matview``, ``foreign``, ``sequence``, ``composite``, ``index``..."""
    columns: tuple[Column, ...]
    """In column order; () for relations in system schemas, indexes and toast tables."""
    view_sql: str | None
    """``pg_get_viewdef`` of a view outside the system schemas (a matview is stored: None)."""


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
        path = [s for s in self.search_path if with_temp or s != self.temp_schema]
        if "pg_catalog" not in path:
            path.insert(0, "pg_catalog")
        if with_temp and self.temp_schema is not None and self.temp_schema not in path:
            path.insert(0, self.temp_schema)
        return path


# Rows in other sessions' temporary schemas are left out: they are invisible
# here, and counting them would change the stamp at each of their temp tables.
_STAMP_SOURCES = (
    ("pg_class", "pg_class WHERE oid >= 16384 AND NOT pg_is_other_temp_schema(relnamespace)"),
    ("pg_type", "pg_type WHERE oid >= 16384 AND NOT pg_is_other_temp_schema(typnamespace)"),
    ("pg_proc", "pg_proc WHERE oid >= 16384 AND NOT pg_is_other_temp_schema(pronamespace)"),
    ("pg_collation", "pg_collation WHERE oid >= 16384 AND NOT pg_is_other_temp_schema(collnamespace)"),
    ("pg_namespace", "pg_namespace WHERE oid >= 16384 AND NOT pg_is_other_temp_schema(oid)"),
    (
        "a",
        "pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE a.attrelid >= 16384 AND a.attnum > 0 AND NOT pg_is_other_temp_schema(c.relnamespace)",
    ),
    (
        "r",
        "pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
        " WHERE r.oid >= 16384 AND NOT pg_is_other_temp_schema(c.relnamespace)",
    ),
    (
        "e",
        "pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
        " WHERE e.oid >= 16384 AND NOT pg_is_other_temp_schema(t.typnamespace)",
    ),
)
_STAMP_SETTINGS = " || ',' || ".join(f"current_setting('{s}')" for s in SETTINGS)


STAMP_SQL = "SELECT " + " || ".join(
    [
        *(f"(SELECT ARRAY[count(*), coalesce(sum({alias}.xmin::text::bigint), 0)::bigint] FROM {source})"
          for alias, source in _STAMP_SOURCES),
        f"ARRAY[hashtext({_STAMP_SETTINGS} || ',' || current_schemas(true)::text)::bigint]",
    ]
)
"""One row, one bigint[]: per catalog the count and xmin sum of user rows, and a hash of the settings."""


_CATALOG = """
WITH nsp AS (
    SELECT oid, nspname::text AS name,
           nspname IN ('pg_catalog', 'information_schema') OR nspname LIKE 'pg\\_toast%%' AS system
      FROM pg_namespace
     WHERE NOT pg_is_other_temp_schema(oid)
), coll AS (
    SELECT co.oid, co.collname::text AS name, n.name AS schema, co.collprovider AS provider,
           co.collisdeterministic AS deterministic,
           co.collprovider = 'c' AND co.collcollate IN ('C', 'POSIX') AS is_c
      FROM pg_collation co JOIN nsp n ON n.oid = co.collnamespace
     WHERE co.collencoding IN (-1, pg_char_to_encoding(current_setting('server_encoding')))
), cols AS (
    SELECT a.attrelid,
           json_agg(json_build_array(
               a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
               co.name, coalesce(co.deterministic, true), coalesce(co.is_c, true)
           ) ORDER BY a.attnum) AS columns
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      JOIN nsp n ON n.oid = c.relnamespace AND NOT n.system
      LEFT JOIN coll co ON co.oid = a.attcollation AND a.attcollation <> 100
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
     GROUP BY a.attrelid
)
SELECT json_build_object(
    'search_path', current_schemas(true),
    'temp_schema', (SELECT name FROM nsp WHERE oid = pg_my_temp_schema()),
    'settings', json_build_object(%(settings)s),
    'text_order_c', (SELECT datcollate IN ('C', 'POSIX') AND datlocprovider = 'c'
                       FROM pg_database WHERE datname = current_database()),
    'relations', (
        SELECT json_agg(json_build_array(
                   n.name, c.relname, c.relkind,
                   CASE WHEN c.relkind = 'v' AND NOT n.system THEN pg_get_viewdef(c.oid) END,
                   cols.columns))
          FROM pg_class c
          JOIN nsp n ON n.oid = c.relnamespace
          LEFT JOIN cols ON cols.attrelid = c.oid),
    'types', (
        SELECT json_agg(json_build_array(
                   n.name, t.typname, t.typtype,
                   CASE t.typtype WHEN 'd' THEN t.typbasetype WHEN 'r' THEN r.rngsubtype END,
                   co.name, coalesce(co.deterministic, true), coalesce(co.is_c, true),
                   (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
                     WHERE e.enumtypid = t.oid)))
          FROM pg_type t
          JOIN nsp n ON n.oid = t.typnamespace AND NOT n.system
          LEFT JOIN pg_range r ON r.rngtypid = t.oid
          LEFT JOIN coll co ON co.oid = t.typcollation AND t.typcollation <> 100
         WHERE NOT (t.typcategory = 'A' AND t.typelem <> 0)),
    'system_types', (
        SELECT json_agg(json_build_array(n.name, t.typname))
          FROM pg_type t JOIN nsp n ON n.oid = t.typnamespace
         WHERE n.name IN ('pg_catalog', 'information_schema')),
    'collations', (
        SELECT json_agg(json_build_array(name, schema, provider, deterministic, is_c)) FROM coll),
    'functions', (
        SELECT json_agg(json_build_array(proname, aggregate, volatile))
          FROM (SELECT p.proname, bool_or(p.prokind IN ('a', 'w')) AS aggregate,
                       bool_or(p.provolatile = 'v') AS volatile
                  FROM pg_proc p JOIN nsp n ON n.oid = p.pronamespace
                 GROUP BY p.proname) f),
    'user_aggregates', (
        SELECT json_agg(DISTINCT json_build_array(n.name, p.proname)::text)
          FROM pg_proc p JOIN nsp n ON n.oid = p.pronamespace
         WHERE p.prokind IN ('a', 'w') AND n.name <> 'pg_catalog'),
    'stamp', (%(stamp)s)
)::text
"""


def catalog_query() -> str:
    """The one SELECT that reads a shard's catalog facts: one row, one json text."""
    settings = ", ".join(f"'{s}', current_setting('{s}')" for s in SETTINGS)
    return _CATALOG % {"settings": settings, "stamp": STAMP_SQL}


_QUERY = catalog_query()


def read_catalog(cursor: Any) -> Catalog:
    """One shard's catalog facts, read in one round trip in the cursor's transaction."""
    cursor.execute(_QUERY)
    row = cursor.fetchone()
    return _build(json.loads(row[0]))


def read_stamp(cursor: Any) -> tuple[int, ...]:
    """A value that changes whenever a catalog fact of the shard (or one of its settings) does."""
    cursor.execute(STAMP_SQL)
    row = cursor.fetchone()
    return tuple(int(x) for x in row[0])


def combine_stamps(stamps: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """Every shard's stamp as one, the way :func:`combine` makes :attr:`Catalog.stamp`."""
    return tuple(x for stamp in stamps for x in stamp)


def _collation(name: str | None, deterministic: bool, is_c: bool) -> str | None:
    return None if name is None or is_c else name


def _build(doc: dict[str, Any]) -> Catalog:
    relations: dict[tuple[str, str], Relation] = {}
    for schema, name, relkind, view_sql, columns in doc["relations"] or ():
        relations[schema, name] = Relation(
            schema=schema,
            name=name,
            kind=_KINDS.get(relkind, relkind),
            columns=tuple(
                Column(col, oid, type_name, _collation(coll, det, is_c), det, coll)
                for col, oid, type_name, coll, det, is_c in columns or ()
            ),
            view_sql=view_sql,
        )
    types = {
        (schema, name): TypeFact(
            schema, name, _TYPE_KINDS.get(typtype, typtype), base, _collation(coll, det, is_c), det,
            tuple(labels or ()),
        )
        for schema, name, typtype, base, coll, det, is_c, labels in doc["types"] or ()
    }
    search_path = tuple(doc["search_path"])
    qualified = {
        (schema, name): CollationFact(name, schema, provider, det, is_c)
        for name, schema, provider, det, is_c in doc["collations"] or ()
    }
    functions = doc["functions"] or ()
    return Catalog(
        search_path=search_path,
        relations=MappingProxyType(relations),
        types=MappingProxyType(types),
        collations=MappingProxyType(_by_name(qualified, search_path)),
        aggregates=frozenset(name for name, aggregate, _ in functions if aggregate),
        user_aggregates=frozenset(tuple(json.loads(pair)) for pair in doc["user_aggregates"] or ()),
        functions=frozenset(name for name, _, _ in functions),
        volatile=frozenset(name for name, _, volatile in functions if volatile),
        text_order_c=bool(doc["text_order_c"]),
        settings=MappingProxyType(dict(doc["settings"])),
        stamp=tuple(int(x) for x in doc["stamp"]),
        temp_schema=doc["temp_schema"],
        system_types=frozenset((s, n) for s, n in doc["system_types"] or ()),
        qualified_collations=MappingProxyType(qualified),
    )


def _by_name(
    qualified: Mapping[tuple[str, str], CollationFact], search_path: Sequence[str]
) -> dict[str, CollationFact]:
    """Collations by bare name: the first on the search path wins, then pg_catalog's, then any."""
    rank = {s: i for i, s in enumerate(reversed(["pg_catalog", *search_path]))}
    by_name: dict[str, CollationFact] = {}
    for (schema, name), fact in sorted(qualified.items(), key=lambda item: rank.get(item[0][0], -1)):
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
    relations = {key: _combine_relation(rel, [c.relations.get(key) for c in catalogs[1:]])
                 for key, rel in first.relations.items()}
    types = {key: _combine_type(fact, [c.types.get(key) for c in catalogs[1:]])
             for key, fact in first.types.items()}
    qualified: dict[tuple[str, str], CollationFact] = {}
    for catalog in catalogs:
        for key, fact in catalog.qualified_collations.items():
            seen = qualified.get(key)
            qualified[key] = fact if seen is None else replace(
                seen, deterministic=seen.deterministic and fact.deterministic, is_c=seen.is_c and fact.is_c
            )
    return Catalog(
        search_path=first.search_path,
        relations=MappingProxyType(relations),
        types=MappingProxyType(types),
        collations=MappingProxyType(_by_name(qualified, first.search_path)),
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
            )
        )
    return replace(relation, columns=tuple(columns))


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


def _differences(what: str, values: Sequence[str | None], shard_names: Sequence[str]) -> str | None:
    """'<what> is "a" on shard 0 (...) but "b" on shard 2 (...)', or None when every shard agrees."""
    groups: dict[str | None, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    if len(groups) < 2:
        return None
    parts = [
        f"{'missing' if value is None else json.dumps(value, ensure_ascii=False)} on {_shards(ix, shard_names)}"
        for value, ix in groups.items()
    ]
    return f"{what} is {parts[0]} but " + ", ".join(parts[1:-1] + [parts[-1]]) if len(parts) > 1 else None


def settings_differences(catalogs: Sequence[Catalog], shard_names: Sequence[str]) -> list[str]:
    """One message per setting whose value differs between shards, naming the shards and their values."""
    _check_shards(catalogs, shard_names)
    names = sorted({name for c in catalogs for name in c.settings}, key=_setting_order)
    messages = []
    for name in names:
        message = _differences(name, [c.settings.get(name) for c in catalogs], shard_names)
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
