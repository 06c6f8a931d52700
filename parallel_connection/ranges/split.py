"""Pure range arithmetic: cut an inclusive id interval into contiguous, non-overlapping ranges."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Span", "split_at", "split_width"]

Span = tuple[int, int]
"""An inclusive ``(start, end)`` id interval."""


def split_width(lo: int, hi: int, width: int) -> list[Span]:
    """``[lo, hi]`` cut into ranges of ``width`` ids each (the last may be shorter)."""
    if width < 1:
        raise ValueError(f"rows_per_range must be at least 1, not {width}")
    if hi < lo:
        return []
    return [(start, min(start + width - 1, hi)) for start in range(lo, hi + 1, width)]


def split_at(lo: int, hi: int, cuts: Iterable[int]) -> list[Span]:
    """``[lo, hi]`` cut after each id in ``cuts``: each cut ends a range (cuts outside are ignored)."""
    if hi < lo:
        return []
    spans: list[Span] = []
    start = lo
    for cut in sorted({c for c in cuts if lo <= c < hi}):
        spans.append((start, cut))
        start = cut + 1
    spans.append((start, hi))
    return spans
