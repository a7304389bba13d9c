"""Pydantic models of a budget policy: limits, rate limits, pricing and the scope tree.

Every model is frozen and forbids unknown fields, so a typo in a policy file is an error.
The top-level :class:`Policy` lives in :mod:`budgetlimiter.policy.root`; import everything
from :mod:`budgetlimiter.policy`.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal, localcontext
from enum import Enum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from ..errors import InvalidAmount
from ..subject import validate_id
from ..usage import MAX_AMOUNT, MICROS_PER_USD, Metric, Usage, usd_to_micros
from .periods import PeriodKind, parse_timezone


class Mode(str, Enum):
    """``hard`` limits block; ``soft`` limits only warn (thresholds and events)."""

    HARD = "hard"
    SOFT = "soft"


class Rollover(str, Enum):
    """What happens to unused budget at the end of a period."""

    RESET = "reset"
    ACCUMULATE = "accumulate"


class OutagePolicy(str, Enum):
    """Behaviour when Redis is unreachable."""

    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


# --------------------------------------------------------------------------- field helpers


def _decimal_in(value: object) -> object:
    """Accept numbers or strings for decimals; floats go through ``str`` (0.1 stays 0.1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return value


def _non_negative_finite(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    return value


#: A non-negative finite decimal, from a number or a string.
Money = Annotated[Decimal, BeforeValidator(_decimal_in), AfterValidator(_non_negative_finite)]


def _coerce_key(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # YAML reads `123:` as an int key
    return value


def _org_id(value: str) -> str:
    return validate_id("org", value)


def _team_id(value: str) -> str:
    return validate_id("team", value)


def _user_id(value: str) -> str:
    return validate_id("user", value)


def _agent_id(value: str) -> str:
    return validate_id("agent", value)


OrgId = Annotated[str, BeforeValidator(_coerce_key), AfterValidator(_org_id)]
TeamId = Annotated[str, BeforeValidator(_coerce_key), AfterValidator(_team_id)]
UserId = Annotated[str, BeforeValidator(_coerce_key), AfterValidator(_user_id)]
AgentId = Annotated[str, BeforeValidator(_coerce_key), AfterValidator(_agent_id)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


def _check_amount(name: str, metric: Metric | None, value: Decimal) -> Decimal:
    if metric is Metric.COST:
        if value * MICROS_PER_USD > MAX_AMOUNT:
            raise ValueError(f"cost {name} exceeds the maximum of about 9 billion USD")
        if value != value.quantize(Decimal("1e-6")):
            raise ValueError(f"cost {name} has more than 6 decimal places (micro-USD precision)")
    elif metric is not None:
        if value != value.to_integral_value():
            raise ValueError(f"{metric.value} {name} must be a whole number")
        if value > MAX_AMOUNT:
            raise ValueError(f"{name} exceeds the maximum {MAX_AMOUNT}")
    return value


def _units(metric: Metric, value: Decimal) -> int:
    if metric is Metric.COST:
        return usd_to_micros("amount", value)
    return int(value)


# --------------------------------------------------------------------------- limits


class LimitSpec(_Model):
    """A budget: ``amount`` of ``metric`` per calendar ``period``."""

    metric: Metric
    amount: Money
    period: PeriodKind
    mode: Mode = Mode.HARD
    thresholds: tuple[Annotated[StrictInt, Field(ge=1, le=1000)], ...] = (50, 75, 90, 100)
    rollover: Rollover = Rollover.RESET
    rollover_cap: Money | None = None
    #: send ``budget.forecast_exceeded`` when the forecast first reaches the limit (None:
    #: on for hard limits, off for soft ones)
    forecast_alert: StrictBool | None = None

    @field_validator("amount")
    @classmethod
    def _amount_fits_metric(cls, value: Decimal, info: ValidationInfo) -> Decimal:
        return _check_amount("amount", info.data.get("metric"), value)

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for a, b in pairwise(value):
            if b <= a:
                raise ValueError(f"thresholds must be strictly increasing percents ({a} then {b})")
        return value

    @field_validator("rollover_cap")
    @classmethod
    def _cap_needs_accumulate(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        if value is None:
            return None
        if info.data.get("rollover") is not Rollover.ACCUMULATE:
            raise ValueError("rollover_cap is only allowed with rollover: accumulate")
        return _check_amount("rollover_cap", info.data.get("metric"), value)

    _units: int = PrivateAttr(0)
    _cap_units: int | None = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        """Precompute the integer amounts (read on the hot path)."""
        self._units = _units(self.metric, self.amount)
        if self.rollover_cap is not None:
            self._cap_units = _units(self.metric, self.rollover_cap)

    # (read the private dict directly: pydantic's private-attribute lookup costs ~3 us)
    @property
    def units(self) -> int:
        """The amount as an integer: micro-USD for cost, the count otherwise."""
        value: int = self.__pydantic_private__["_units"]  # type: ignore[index]
        return value

    @property
    def cap_units(self) -> int | None:
        """The rollover cap as an integer (same unit as :attr:`units`), or ``None``."""
        value: int | None = self.__pydantic_private__["_cap_units"]  # type: ignore[index]
        return value

    @property
    def alerts_on_forecast(self) -> bool:
        """Whether a forecast reaching this limit is alerted (``forecast_alert``, by default
        on for hard limits)."""
        return self.mode is Mode.HARD if self.forecast_alert is None else self.forecast_alert

    @property
    def key(self) -> tuple[Metric, PeriodKind]:
        """Identity of the limit within one scope: ``(metric, period)``."""
        return (self.metric, self.period)


_PER_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000}


def _rate_metric_in(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "requests":
        return Metric.INVOCATIONS.value
    return value


class RateSpec(_Model):
    """A smooth-refill rate limit (GCRA): ``limit`` units of ``metric`` per ``per``.

    ``metric`` ``requests`` is accepted as an alias of ``invocations``. ``burst`` (default
    ``limit``) is how many units may be spent at once after an idle period.
    """

    metric: Annotated[Metric, BeforeValidator(_rate_metric_in)] = Metric.INVOCATIONS
    limit: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
    per: Literal["second", "minute", "hour"]
    burst: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)] | None = None

    @field_validator("metric")
    @classmethod
    def _no_cost(cls, value: Metric) -> Metric:
        if value is Metric.COST:
            raise ValueError(
                "rate limits count requests or tokens; for spend per minute/hour use a "
                "cost limit with period minute or hour"
            )
        return value

    @property
    def per_ms(self) -> int:
        """The rate period in milliseconds."""
        return _PER_MS[self.per]

    @property
    def burst_units(self) -> int:
        """The burst size (``limit`` when not given)."""
        return self.limit if self.burst is None else self.burst

    @property
    def key(self) -> tuple[Metric, str]:
        """Identity of the rate limit within one scope: ``(metric, per)``."""
        return (self.metric, self.per)


# --------------------------------------------------------------------------- pricing


class Pricing(_Model):
    """Prices of one agent in USD: per million input/output/cached-input tokens and per call."""

    input_per_million: Money = Decimal(0)
    output_per_million: Money = Decimal(0)
    cached_input_per_million: Money | None = None
    per_invocation: Money = Decimal(0)

    def cost_micros(self, usage: Usage) -> int:
        """Total cost of ``usage`` in whole micro-USD, exact, rounded up (ROUND_CEILING).

        If ``usage.cost`` is set it is used as is. Cached input tokens (an optional
        ``cached_input_tokens`` attribute of the usage, counted within ``input_tokens``) are
        priced at ``cached_input_per_million`` when that is set.
        """
        if usage.cost is not None:
            return usd_to_micros("cost", usage.cost)
        cached = int(getattr(usage, "cached_input_tokens", 0) or 0)
        cached = min(max(cached, 0), usage.input_tokens)
        cached_price = self.input_per_million
        if self.cached_input_per_million is not None:
            cached_price = self.cached_input_per_million
        with localcontext() as ctx:
            ctx.prec = 80
            # tokens * USD-per-million == micro-USD
            micros = (
                (usage.input_tokens - cached) * self.input_per_million
                + cached * cached_price
                + usage.output_tokens * self.output_per_million
                + usage.invocations * self.per_invocation * MICROS_PER_USD
            )
            result = int(micros.to_integral_value(rounding=ROUND_CEILING))
        if result > MAX_AMOUNT:
            raise InvalidAmount("computed cost exceeds the maximum of about 9 billion USD")
        return result


# --------------------------------------------------------------------------- scope tree


def _no_duplicate_keys(kind: str, items: tuple[Any, ...]) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        if item.key in seen:
            what = " per ".join(str(getattr(k, "value", k)) for k in item.key)
            raise ValueError(
                f"duplicate {kind} for {what}: entries [{seen[item.key]}] and [{i}]; "
                "one scope may declare each metric/period only once"
            )
        seen[item.key] = i


class _Limited(_Model):
    limits: tuple[LimitSpec, ...] = ()
    rates: tuple[RateSpec, ...] = ()

    @field_validator("limits")
    @classmethod
    def _unique_limits(cls, value: tuple[LimitSpec, ...]) -> tuple[LimitSpec, ...]:
        _no_duplicate_keys("limit", value)
        return value

    @field_validator("rates")
    @classmethod
    def _unique_rates(cls, value: tuple[RateSpec, ...]) -> tuple[RateSpec, ...]:
        _no_duplicate_keys("rate limit", value)
        return value


class AgentSpec(_Limited):
    """Limits and rates of one agent scope. ``inherit: false`` ignores defaults for it."""

    inherit: bool = True


class _NodeBase(_Limited):
    agents: dict[AgentId, AgentSpec] = Field(default_factory=dict)


class UserDefaults(_Model):
    """Defaults declared at a user: ``agent`` applies to that user's agent scopes."""

    agent: AgentSpec | None = None


class UserDefaultSpec(_NodeBase):
    """A default user (applies to every user it is the default for)."""

    defaults: UserDefaults = Field(default_factory=UserDefaults)


class TeamDefaults(UserDefaults):
    """Defaults declared at a team: for its users and its agent scopes."""

    user: UserDefaultSpec | None = None


class TeamDefaultSpec(_NodeBase):
    """A default team (applies to every team it is the default for)."""

    defaults: TeamDefaults = Field(default_factory=TeamDefaults)


class OrgDefaults(TeamDefaults):
    """Defaults declared at an org: for its teams, users and agent scopes."""

    team: TeamDefaultSpec | None = None


class OrgDefaultSpec(_NodeBase):
    """A default org (applies to every org, declared or not)."""

    defaults: OrgDefaults = Field(default_factory=OrgDefaults)


class TopDefaults(OrgDefaults):
    """Top-level defaults: ``org``, ``team``, ``user`` and ``agent`` (org agent scopes)."""

    org: OrgDefaultSpec | None = None


#: Alias: the defaults block of a node.
Defaults = OrgDefaults


class UserSpec(UserDefaultSpec):
    """An explicitly declared user."""

    inherit: bool = True


class TeamSpec(TeamDefaultSpec):
    """An explicitly declared team and its declared users."""

    inherit: bool = True
    users: dict[UserId, UserSpec] = Field(default_factory=dict)


class OrgSpec(OrgDefaultSpec):
    """An explicitly declared org, its teams, its users without a team, and its timezone."""

    inherit: bool = True
    timezone: str | None = None
    teams: dict[TeamId, TeamSpec] = Field(default_factory=dict)
    users: dict[UserId, UserSpec] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            parse_timezone(value)
        return value
