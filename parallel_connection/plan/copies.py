"""COPY statements sent through ``execute()``: what one database would run so, and what not."""

from __future__ import annotations

import psycopg2
from pglast import ast

from ..errors import NotSupportedError
from .model import ShardFacts
from .names import bind_names
from .query import layout_of

__all__ = ["check_copy"]


def check_copy(stmt: ast.CopyStmt, facts: ShardFacts) -> None:
    """Refuse a COPY sent through ``execute()`` that one database would not run so.

    COPY ... FROM STDIN / TO STDOUT needs a file: as psycopg2, a ProgrammingError naming
    copy_from() / copy_to() (or copy_expert()). A server-side file or program read into a
    sharded table would load the whole file on every shard, and a sharded table or a query
    written to a server-side file would leave each shard's part in a file of its own: refused,
    naming copy_expert() with STDIN / STDOUT. Copied tables run on every shard as before.
    """
    if stmt.filename is None and not stmt.is_program:
        if stmt.is_from:
            raise psycopg2.ProgrammingError(
                "can't execute COPY FROM: use the copy_from() method instead (or copy_expert())"
            )
        raise psycopg2.ProgrammingError(
            "can't execute COPY TO: use the copy_to() method instead (or copy_expert())"
        )
    where = "PROGRAM" if stmt.is_program else "a server file"
    if stmt.relation is None:
        raise NotSupportedError(
            f"COPY (query) TO {where} on several shards (each shard would write its own part); "
            'read it through the connection with cur.copy_expert("COPY (...) TO STDOUT", file)'
        )
    bound = bind_names(stmt.relation, facts.catalog)
    if not isinstance(bound, ast.RangeVar):
        if stmt.is_from:  # a view with INSTEAD OF triggers would take the whole file on every shard
            raise NotSupportedError(f"COPY into the view {stmt.relation.relname} FROM {where} across shards")
        return  # COPY view TO ...: the shards refuse it themselves
    info = layout_of(facts).table(bound)
    if info is None or info.kind == "whole":
        return
    name = info.name
    if stmt.is_from:
        raise NotSupportedError(
            f"COPY {name} FROM {where} would load the whole input into every shard of the sharded "
            f"table {name}; send the data through the connection, split by key: "
            f'cur.copy_expert("COPY {name} FROM STDIN ...", open(path))'
        )
    raise NotSupportedError(
        f"COPY {name} TO {where} on several shards (each shard would write its own part of the "
        f'sharded table {name}); read it through the connection with cur.copy_expert("COPY {name} TO '
        'STDOUT ...", file)'
    )
