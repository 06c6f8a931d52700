"""Range arithmetic: every split covers [lo, hi] exactly, with no overlap and no gap."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parallel_connection.ranges import split_at, split_width

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def assert_exact_cover(spans: list[tuple[int, int]], lo: int, hi: int) -> None:
    assert spans, "a non-empty interval gives at least one range"
    assert spans[0][0] == lo
    assert spans[-1][1] == hi
    for start, end in spans:
        assert start <= end
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start == end + 1, "ranges must neither overlap nor leave a gap"


@given(lo=ids, length=st.integers(0, 10**6), width=st.integers(1, 10**5))
def test_width_split_covers_exactly(lo, length, width):
    hi = min(lo + min(length, width * 500), 2**63 - 1)
    spans = split_width(lo, hi, width)
    assert_exact_cover(spans, lo, hi)
    assert all(end - start + 1 == width for start, end in spans[:-1])
    assert spans[-1][1] - spans[-1][0] + 1 <= width


@given(lo=ids, length=st.integers(0, 10**9), cuts=st.lists(ids, max_size=50))
def test_cut_split_covers_exactly(lo, length, cuts):
    hi = min(lo + length, 2**63 - 1)
    spans = split_at(lo, hi, cuts + [lo + (c % (length + 1)) for c in cuts])
    assert_exact_cover(spans, lo, hi)
    inside = {c for c in cuts if lo <= c < hi} | {
        lo + (c % (length + 1)) for c in cuts if lo + (c % (length + 1)) < hi
    }
    assert {end for _, end in spans[:-1]} == inside


def test_empty_interval_gives_no_ranges():
    assert split_width(5, 4, 10) == []
    assert split_at(5, 4, [1]) == []


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        split_width(1, 10, 0)
