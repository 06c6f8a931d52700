"""What the planner needs to know about the shards, looked up once per connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fanout import FanOut
from .plan.model import ShardFacts

__all__ = ["lookup_facts"]

_FACTS = """
SELECT (SELECT to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()),
       (SELECT array_agg(DISTINCT proname::text) FROM pg_proc WHERE prokind IN ('a', 'w'))
"""

_C_COLLATIONS = ("C", "POSIX")


def lookup_facts(fanout: FanOut, connections: Sequence[Any]) -> ShardFacts:
    """Every shard's collation and aggregate names, read in one round trip.

    It runs just before the first statement that needs a plan, in that
    statement's transaction: ending the transaction here would invalidate
    named cursors other threads hold.
    """

    def read(i: int) -> tuple[dict[str, Any], list[str]]:
        with connections[i].cursor() as cur:
            cur.execute(_FACTS)
            database, aggregates = cur.fetchone()
        return database, aggregates or []

    answers = fanout.run(read)
    text_c = all(
        d.get("datcollate") in _C_COLLATIONS and d.get("datlocprovider", "c") == "c" for d, _ in answers
    )
    names = frozenset(name for _, names in answers for name in names)
    return ShardFacts(text_order_c=text_c, aggregates=names)
