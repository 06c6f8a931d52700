"""PostgreSQL's numeric arithmetic where it rounds: division and square root scales.

avg, variance and stddev over integers and numerics are numeric results whose
number of decimal digits PostgreSQL chooses itself (``select_div_scale`` in
numeric.c); these functions give the same digits, exactly.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["EXACT", "avg", "dscale", "variance"]

EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])
"""Additions and multiplications in this context never round."""

_NBASE_DIGITS = 4
_MIN_SIG_DIGITS = 16
_MAX_DISPLAY_SCALE = 1000


def dscale(value: Decimal) -> int:
    """The number of digits after the decimal point PostgreSQL keeps for ``value``."""
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _weight_and_first(value: Decimal) -> tuple[int, int]:
    """PostgreSQL's base-10000 weight and leading digit of ``value`` (0, 0 for zero)."""
    if value.is_zero():
        return 0, 0
    _sign, digits, exponent = abs(value).as_tuple()
    leading = len(digits) + int(exponent) - 1
    weight = leading // _NBASE_DIGITS
    scaled = abs(value).scaleb(-_NBASE_DIGITS * weight, context=EXACT)
    return weight, int(scaled) % 10000


def div_scale(a: Decimal, b: Decimal) -> int:
    """``select_div_scale``: the scale of ``a / b`` in PostgreSQL."""
    weight1, first1 = _weight_and_first(a)
    weight2, first2 = _weight_and_first(b)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    scale = _MIN_SIG_DIGITS - qweight * _NBASE_DIGITS
    scale = max(scale, dscale(a), dscale(b), 0)
    return min(scale, _MAX_DISPLAY_SCALE)


def _divide(a: Decimal, b: Decimal, scale: int) -> Decimal:
    """``a / b`` rounded half away from zero to ``scale`` digits, computed exactly."""
    ta, tb = a.as_tuple(), b.as_tuple()
    na = int(Decimal((0, ta.digits, 0)))
    nb = int(Decimal((0, tb.digits, 0)))
    ea, eb = int(ta.exponent), int(tb.exponent)
    numerator = na * 10 ** max(0, -eb + scale + ea) if -eb + scale + ea >= 0 else na
    denominator = nb * 10 ** max(0, eb - scale - ea)
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    negative = (ta.sign ^ tb.sign) and quotient != 0
    return Decimal((1 if negative else 0, tuple(int(d) for d in str(quotient)), -scale))


def divide(a: Decimal, b: Decimal) -> Decimal:
    """``a / b`` as PostgreSQL's numeric division gives it (NaN and infinities included)."""
    if a.is_nan() or b.is_nan():
        return Decimal("NaN")
    if a.is_infinite():
        return Decimal("NaN") if b.is_infinite() else (a if b > 0 else -a)
    if b.is_infinite():
        return Decimal(0)
    return _divide(a, b, div_scale(a, b))


def avg(count: int, total: Decimal | int | None) -> Decimal | None:
    """``avg`` over integers or numerics from the merged count and sum."""
    if not count or total is None:
        return None
    return divide(Decimal(total), Decimal(count))


def variance(
    count: int, total: Decimal | int | None, squares: Decimal | None, variant: str
) -> Decimal | None:
    """var_samp, var_pop, stddev_samp or stddev_pop as numeric_stddev_internal computes it."""
    sample = variant.endswith("samp")
    if total is None or squares is None or count == 0 or (sample and count == 1):
        return None
    sum_x, sum_x2 = Decimal(total), Decimal(squares)
    if sum_x.is_nan() or sum_x2.is_nan() or sum_x.is_infinite() or sum_x2.is_infinite():
        return Decimal("NaN")
    numerator = EXACT.subtract(EXACT.multiply(Decimal(count), sum_x2), EXACT.multiply(sum_x, sum_x))
    if numerator <= 0:
        return Decimal(0)
    denominator = Decimal(count * (count - 1) if sample else count * count)
    scale = div_scale(numerator, denominator)
    result = _divide(numerator, denominator, scale)
    if variant.startswith("stddev"):
        digits = len(str(int(result))) + scale + 10
        root = result.sqrt(context=decimal.Context(prec=digits))
        result = root.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP, context=EXACT)
    return result
