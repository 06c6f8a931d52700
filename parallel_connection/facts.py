"""What the planner needs to know about the shards, looked up once per connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fanout import FanOut
from .plan.model import ShardFacts

__all__ = ["lookup_facts"]

_FACTS = """
SELECT (SELECT to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()),
       (SELECT array_agg(DISTINCT proname::text) FROM pg_proc WHERE prokind IN ('a', 'w')),
       (SELECT array_agg(DISTINCT ARRAY[c.relname::text, a.attname::text, co.collname::text])
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_collation co ON co.oid = a.attcollation
         WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attcollation NOT IN (0, 100, 950, 951)
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%')
"""

_C_COLLATIONS = ("C", "POSIX")


def lookup_facts(fanout: FanOut, connections: Sequence[Any]) -> ShardFacts:
    """Every shard's collation and aggregate names, read in one round trip.

    It runs just before the first statement that needs a plan, in that
    statement's transaction: ending the transaction here would invalidate
    named cursors other threads hold.
    """

    def read(i: int) -> tuple[dict[str, Any], list[str], list[list[str]]]:
        with connections[i].cursor() as cur:
            cur.execute(_FACTS)
            database, aggregates, collated = cur.fetchone()
        return database, aggregates or [], collated or []

    answers = fanout.run(read)
    text_c = all(
        d.get("datcollate") in _C_COLLATIONS and d.get("datlocprovider", "c") == "c" for d, _, _ in answers
    )
    names = frozenset(name for _, names, _ in answers for name in names)
    collated = frozenset(tuple(triple) for _, _, triples in answers for triple in triples)
    return ShardFacts(text_order_c=text_c, aggregates=names, collated_columns=collated)
