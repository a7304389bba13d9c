"""Plain records exchanged between the reconciler, the durable store and the alert sinks.

Amounts are integers (cost in micro-USD). ``team``/``user`` are ``""`` when absent, so they can
be part of primary keys on every database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one subject on one local day (``YYYY-MM-DD`` in the org's timezone).

    From the reconciler it is a delta to add; from the store it is the recorded total.
    """

    org: str
    team: str
    user: str
    agent: str
    day: str
    invocations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: int = 0


#: ``AlertEvent.threshold`` of a forecast event (a threshold crossing's is 1..1000 percent)
FORECAST_THRESHOLD = 0


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A threshold crossing: fires once per (scope, metric, period, period id, threshold).

    A forecast event (``threshold`` is :data:`FORECAST_THRESHOLD`: the forecast first reached
    the limit) fires once per (scope, metric, period, period id); its ``used`` is the
    *projected* usage at the period's end. (Kept in the same table, so that it goes through
    the same outbox, dedupe and delivery; a restore ignores it: no threshold is at or below 0.)
    """

    org: str
    scope: str        # textual scope, e.g. "org:acme/team:eng"
    metric: str       # Metric value, e.g. "cost"
    period: str       # PeriodKind value
    period_id: str
    threshold: int    # percent
    used: int
    limit: int
    occurred_ms: int

    @property
    def is_forecast(self) -> bool:
        """A ``budget.forecast_exceeded`` event rather than a threshold crossing."""
        return self.threshold == FORECAST_THRESHOLD

    @property
    def id(self) -> str:
        """Stable id (receivers dedupe on it): the same crossing always has the same id."""
        raw = "\x1f".join([self.scope, self.metric, self.period, self.period_id,
                           str(self.threshold)])
        return "evt_" + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to deliver to one sink, as kept in the outbox."""

    event: AlertEvent
    sink: str
    attempts: int
    next_attempt_ms: int
    state: str  # "pending" | "delivered" | "dead"
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Adjustment:
    """An audited credit (negative amount) or debit (positive) of one scope's usage.

    ``amount`` is what was applied to the live counters (a credit is clamped so that no
    counter goes below zero) and what restores and reports use; ``requested`` is what the
    operator asked for (``None`` when constructing means "the same as ``amount``").
    ``day`` is the local day the counters were changed on.
    """

    org: str
    scope: str
    metric: str
    amount: int
    day: str
    who: str
    why: str
    at_ms: int
    id: str = ""
    requested: int | None = None

    def __post_init__(self) -> None:
        if self.requested is None:
            object.__setattr__(self, "requested", self.amount)
