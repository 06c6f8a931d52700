"""Statement analysis with PostgreSQL's own grammar (pglast) into a merge plan.

The plan says what each shard runs and what the client does with the rows;
it never touches a connection.
"""

from .aggregates import check_shard_types
from .model import AggregatePlan, ClientPlan, Const, Output, Param, Partial, Plan, ShardFacts, SortKey
from .planner import plan_statement
from .refusals import refuse

__all__ = [
    "AggregatePlan",
    "ClientPlan",
    "Const",
    "Output",
    "Param",
    "Partial",
    "Plan",
    "ShardFacts",
    "SortKey",
    "check_shard_types",
    "plan_statement",
    "refuse",
]
