"""HAVING as a small predicate tree the client evaluates on merged groups.

Aggregates and every aggregate-free sub-expression become columns the shards
compute (so PostgreSQL types them); literals and parameters become values;
only AND, OR, NOT, comparisons, IS [NOT] NULL and + - * are left to the
client, which evaluates them exactly. Any other expression over aggregate
results is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from pglast import ast, enums

from .model import Expr

__all__ = ["COMPARISONS", "compile_having"]

COMPARISONS = ("=", "<>", "!=", "<", "<=", ">", ">=")
ARITHMETIC = ("+", "-", "*")

Leaf = Callable[[ast.Node], tuple[str, object]]


def compile_having(node: ast.Node, leaf: Leaf) -> Expr:
    """The predicate tree for ``node``; ``leaf`` turns operands into columns or values."""
    if isinstance(node, ast.BoolExpr):
        args = tuple(compile_having(a, leaf) for a in cast("tuple[ast.Node, ...]", node.args))
        if node.boolop == enums.BoolExprType.AND_EXPR:
            return ("and", *args)
        if node.boolop == enums.BoolExprType.OR_EXPR:
            return ("or", *args)
        return ("not", args[0])
    if isinstance(node, ast.NullTest):
        test: Expr = ("isnull", _operand(cast(ast.Node, node.arg), leaf))
        return test if node.nulltesttype == enums.NullTestType.IS_NULL else ("not", test)
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP and len(_name(node)) == 1:
        op = _name(node)[0].sval
        if op in COMPARISONS and node.lexpr is not None:
            return ("cmp", op, _operand(node.lexpr, leaf), _operand(cast(ast.Node, node.rexpr), leaf))
    return leaf(node)


def _operand(node: ast.Node, leaf: Leaf) -> Expr:
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP and len(_name(node)) == 1:
        op = _name(node)[0].sval
        if op in ARITHMETIC and node.lexpr is not None:
            return ("arith", op, _operand(node.lexpr, leaf), _operand(cast(ast.Node, node.rexpr), leaf))
    return leaf(node)


def _name(node: ast.A_Expr) -> tuple[Any, ...]:
    """The operator name's parts; PostgreSQL's parser always sets it on an operator expression."""
    return cast("tuple[Any, ...]", node.name)
