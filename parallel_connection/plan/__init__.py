"""Statement analysis with PostgreSQL's own grammar (pglast) into a merge plan.

The plan says what each shard runs and what the client does with the rows;
it never touches a connection.
"""

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
    "plan_statement",
    "refuse",
]
