"""Statement analysis with PostgreSQL's own grammar (pglast) into a merge plan.

The plan says what each shard runs and what the client does with the rows;
it never touches a connection.
"""

from .aggregates import check_shard_types
from .model import (
    AggregatePlan,
    ClientPlan,
    Const,
    Moment,
    Output,
    Param,
    Partial,
    Pin,
    Plan,
    ShardFacts,
    SortKey,
    Targets,
    Task,
)
from .planner import plan_statement, quick_plan, stage_statement
from .refusals import refuse
from .scopes import RELATION

__all__ = [
    "RELATION",
    "AggregatePlan",
    "ClientPlan",
    "Const",
    "Moment",
    "Output",
    "Param",
    "Partial",
    "Pin",
    "Plan",
    "ShardFacts",
    "SortKey",
    "Targets",
    "Task",
    "check_shard_types",
    "plan_statement",
    "quick_plan",
    "refuse",
    "stage_statement",
]
