"""Metrics, amounts and money.

Money is integer micro-USD inside (``1 USD == 1_000_000``) and :class:`~decimal.Decimal` USD at
the API. Every amount that reaches Redis is a non-negative integer below 2**53 so that it survives
Lua's double-precision numbers exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation, localcontext
from enum import Enum

from .errors import InvalidAmount

MICROS_PER_USD = 1_000_000
MAX_AMOUNT = 2**53 - 1  # largest integer a Lua double holds exactly


class Metric(str, Enum):
    """What a limit counts."""

    INVOCATIONS = "invocations"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    TOTAL_TOKENS = "total_tokens"
    COST = "cost"

    @property
    def code(self) -> str:
        """One-letter code used in Redis hash fields."""
        return _CODES[self]

    def __str__(self) -> str:
        return self.value


_CODES = {
    Metric.INVOCATIONS: "n",
    Metric.INPUT_TOKENS: "i",
    Metric.OUTPUT_TOKENS: "o",
    Metric.TOTAL_TOKENS: "t",
    Metric.COST: "c",
}
METRIC_BY_CODE = {code: metric for metric, code in _CODES.items()}
#: Order of metrics in every amount vector sent to Lua.
METRIC_ORDER: tuple[Metric, ...] = (
    Metric.INVOCATIONS,
    Metric.INPUT_TOKENS,
    Metric.OUTPUT_TOKENS,
    Metric.TOTAL_TOKENS,
    Metric.COST,
)
#: the Amounts field of each metric (``Metric.value`` is a descriptor call on every read)
_FIELD: dict[Metric, str] = {m: m.value for m in METRIC_ORDER}
assert [f for f in _FIELD.values()] == ["invocations", "input_tokens", "output_tokens",
                                        "total_tokens", "cost"]  # as_list spells this out


def check_count(name: str, value: object) -> int:
    """Validate a non-negative integer count (tokens, invocations)."""
    count: int
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        count = int(value)
    elif isinstance(value, Decimal) and value.is_finite() and value.adjusted() > 16:
        raise InvalidAmount(f"{name} {str(value)[:40]} exceeds the maximum {MAX_AMOUNT}")
    elif (isinstance(value, Decimal) and value.is_finite()
          and value == value.to_integral_value()):
        count = int(value)
    else:
        raise InvalidAmount(f"{name} must be a non-negative integer, got {value!r}")
    if count < 0:
        raise InvalidAmount(f"{name} must not be negative, got {count}")
    if count > MAX_AMOUNT:
        raise InvalidAmount(f"{name} {count} exceeds the maximum {MAX_AMOUNT}")
    return count


def to_decimal(name: str, value: object) -> Decimal:
    """Parse a money amount (Decimal, int or decimal string; floats are refused as inexact)."""
    if isinstance(value, bool):
        raise InvalidAmount(f"{name} must be a decimal amount, got {value!r}")
    if isinstance(value, float):
        raise InvalidAmount(
            f"{name} must be a Decimal, int or decimal string, not a float ({value!r}); "
            "floats cannot represent money exactly"
        )
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidAmount(f"{name} is not a decimal number: {str(value)[:40]!r}") from None
    if not dec.is_finite():
        raise InvalidAmount(f"{name} must be finite, got {value!r}")
    if dec < 0:
        raise InvalidAmount(f"{name} must not be negative, got {value}")
    return dec


def usd_to_micros(name: str, value: object) -> int:
    """USD (Decimal-like) to integer micro-USD, rounding fractions of a micro-dollar up."""
    dec = to_decimal(name, value)
    if dec.adjusted() > 10:  # checked before any big-integer arithmetic
        raise InvalidAmount(f"{name} {str(value)[:40]} USD exceeds the maximum of about "
                            "9 billion USD")
    with localcontext() as ctx:  # exact: a 28-digit context would round before the ceiling
        ctx.prec = len(dec.as_tuple().digits) + 10
        micros = int((dec * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))
    if micros > MAX_AMOUNT:
        raise InvalidAmount(f"{name} {value} USD exceeds the maximum of about 9 billion USD")
    return micros


def micros_to_usd(micros: int) -> Decimal:
    """Integer micro-USD to Decimal USD (exact)."""
    return Decimal(micros).scaleb(-6)


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage of one invocation (an estimate before the call, the actual after it).

    ``cost`` is Decimal USD; leave it ``None`` to compute it from the policy's pricing of the
    agent. ``total_tokens`` is always ``input_tokens + output_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    invocations: int = 1
    cost: Decimal | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_tokens", check_count("input_tokens", self.input_tokens))
        object.__setattr__(self, "output_tokens", check_count("output_tokens", self.output_tokens))
        object.__setattr__(self, "invocations", check_count("invocations", self.invocations))
        if self.cost is not None:
            object.__setattr__(self, "cost", to_decimal("cost", self.cost))
            usd_to_micros("cost", self.cost)
        if self.input_tokens + self.output_tokens > MAX_AMOUNT:
            raise InvalidAmount("total_tokens exceeds the maximum")

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Amounts:
    """Integer amounts of every metric (cost in micro-USD); what goes to Lua."""

    invocations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: int = 0

    def get(self, metric: Metric) -> int:
        value: int = getattr(self, _FIELD[metric])
        return value

    def as_list(self) -> list[int]:
        """The amounts in :data:`METRIC_ORDER` (spelled out: a leased check reads it twice,
        and an enum member's ``.value`` is a descriptor call)."""
        return [self.invocations, self.input_tokens, self.output_tokens, self.total_tokens,
                self.cost]

    @property
    def cost_usd(self) -> Decimal:
        return micros_to_usd(self.cost)
