"""Typed results of the hot path: decisions, reservations, settle results, statuses."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

from .subject import Scope, Subject
from .usage import Amounts, Metric

LimitState = Literal["ok", "soft_exceeded", "blocked"]
SettleStatus = Literal["committed", "recorded", "released", "duplicate", "late", "local"]


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@functools.lru_cache(maxsize=8192)  # limits, carries and estimates repeat from answer to answer
def _usd_text(micros: int) -> str:
    """``str(micros_to_usd(micros))`` without Decimal (the same text: six decimals, never an
    exponent); a full answer of the sidecar formats several amounts per limit."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(-micros if micros < 0 else micros, 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def _usd_fresh(micros: int) -> str:
    """:func:`_usd_text` for amounts that rarely repeat (what is taken, what remains): an lru
    miss costs more than the formatting, and ``%`` formats a divmod pair faster than an
    f-string of its unpacked parts."""
    if micros >= 0:
        return "%d.%06d" % divmod(micros, 1_000_000)  # noqa: UP031 (speed, see above)
    return "-%d.%06d" % divmod(-micros, 1_000_000)  # noqa: UP031


#: a metric's text without the enum's ``value`` descriptor (a full answer reads it per limit)
_METRIC_TEXT: dict[Metric, str] = {m: m.value for m in Metric}


def _money(metric: Metric, units: int) -> str | int:
    return _usd_text(units) if metric is Metric.COST else units


@functools.lru_cache(maxsize=65536)
def _text(value: Scope | Subject) -> str:
    """The text of a scope or subject, computed once per value (answers repeat them)."""
    return str(value)


@functools.lru_cache(maxsize=4096)  # a limit's reset time is one object per template
def _utc_iso(when: datetime) -> str:
    return when.isoformat()


def _iso(when: datetime) -> str:
    # cached for UTC times only: equal instants in other zones compare (and hash) equal
    # but print differently
    return _utc_iso(when) if when.tzinfo is timezone.utc else when.isoformat()


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def ms_text(ms: int) -> str:
    """``ms_to_datetime(ms).isoformat()`` for ``ms >= 0``, the whole seconds formatted once
    (a reservation's expiry, in every full answer, differs only in its milliseconds)."""
    seconds, millis = divmod(ms, 1000)
    base = _second_text(seconds)
    if not millis:
        return base
    return f"{base[:-6]}.{millis:03d}000{base[-6:]}"


# not frozen: a frozen dataclass costs ~3x more to build, and a decision builds one per limit
@dataclass(slots=True)
class LimitStatus:
    """One limit of one scope as Redis saw it during the decision.

    Amounts are integers in the metric's unit (micro-USD for cost); ``to_dict`` gives money as
    decimal USD strings.

    - ``limit``: for a budget the effective limit (declared amount plus carried-over budget);
      for a rate limit the rate, in units per ``period`` (``per second|minute|hour``).
    - ``burst``: for a rate limit the bucket: how many units may go at once (the policy's
      ``burst``, ``limit`` when not given); ``None`` for budgets.
    - ``taken``: what is used or reserved (an admitted check's own reservation included); for
      a rate limit, how much of the bucket is in use.
    - ``remaining``: ``limit - taken`` for a budget, ``burst - taken`` for a rate limit (never
      below zero).
    - ``requested``: how much of this limit's metric the request asked for (its estimate;
      units for a rate limit); 0 in ``status()`` reads. A refusal's ``blocked_by`` shows what
      did not fit: ``requested`` more than ``limit - used - reserved`` allowed.
    - ``used`` and ``reserved``: ``None`` in every limit of an *admitted* check (one that
      reserved): it reads and reserves one counter per budget (used + reserved together),
      which keeps the hot path at one Redis command per budget. Refusals, dry runs,
      ``status()`` and ``scope_status()`` report both (for a rate limit: ``used == taken``,
      ``reserved == 0``).
    """

    scope: Scope
    kind: Literal["budget", "rate"]
    metric: Metric
    period: str
    mode: Literal["hard", "soft"]
    limit: int
    taken: int
    used: int | None
    reserved: int | None
    carry: int
    resets_at: datetime | None
    state: LimitState
    origin: str = ""
    requested: int = 0
    burst: int | None = None

    @property
    def capacity(self) -> int:
        """What ``taken`` is measured against: ``limit`` for a budget, ``burst`` for a rate."""
        return self.limit if self.burst is None else self.burst

    @property
    def remaining(self) -> int:
        return max(0, self.capacity - self.taken)

    @property
    def percent(self) -> float:
        """Share of the limit (the burst of a rate limit) taken, for display only."""
        cap = self.capacity
        if cap <= 0:
            return 100.0 if self.taken > 0 else 0.0
        return 100.0 * self.taken / cap

    def to_dict(self) -> dict[str, Any]:
        # the sidecar's full answer builds one per limit: the properties, ``_money`` and
        # ``isoformat`` are inlined or cached (same text as before, tested field by field)
        taken = self.taken
        burst = self.burst
        cap = self.limit if burst is None else burst
        percent = round(100.0 * taken / cap, 2) if cap > 0 else (100.0 if taken > 0 else 0.0)
        remaining = cap - taken if cap > taken else 0
        resets = self.resets_at
        used, reserved = self.used, self.reserved
        metric = self.metric
        if metric is Metric.COST:
            t, f = _usd_text, _usd_fresh  # (limits, estimates and carries repeat; the rest not)
            return {
                "scope": _text(self.scope), "kind": self.kind, "metric": "cost",
                "period": self.period, "mode": self.mode, "limit": t(self.limit),
                "burst": burst, "requested": t(self.requested), "taken": f(taken),
                "used": None if used is None else f(used),
                "reserved": None if reserved is None else f(reserved),
                "remaining": f(remaining), "carry": t(self.carry), "percent": percent,
                "resets_at": _iso(resets) if resets else None, "state": self.state,
            }
        return {
            "scope": _text(self.scope), "kind": self.kind, "metric": _METRIC_TEXT[metric],
            "period": self.period, "mode": self.mode, "limit": self.limit, "burst": burst,
            "requested": self.requested, "taken": taken, "used": used, "reserved": reserved,
            "remaining": remaining, "carry": self.carry, "percent": percent,
            "resets_at": _iso(resets) if resets else None, "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a successful check reserved; pass it to ``commit`` or ``release``.

    ``plan`` is the reservation's refund/commit plan as built by this process; it lets a
    commit still count the usage if Redis lost the reservation (e.g. after a restart).
    ``lease`` is the id of the lease it was admitted from (see :mod:`budgetlimiter.engine.leases`);
    such a reservation is committed or released in-process.
    """

    id: str
    subject: Subject
    estimate: Amounts
    created_ms: int
    expires_ms: int
    plan: str = field(repr=False, default="")
    local: bool = False
    lease: str = ""

    @property
    def expires_at(self) -> datetime:
        return ms_to_datetime(self.expires_ms)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a check. ``allowed`` is the only field a caller must read."""

    allowed: bool
    subject: Subject
    reservation: Reservation | None
    limits: tuple[LimitStatus, ...]
    blocked_by: LimitStatus | None = None
    retry_after: float | None = None
    reason: str = ""
    degraded: bool = False
    cached: bool = False
    #: admitted in-process from a lease; ``limits`` are then as seen when the lease opened
    leased: bool = False

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def warnings(self) -> tuple[LimitStatus, ...]:
        """Soft limits this request exceeds (allowed, but someone should know)."""
        return tuple(s for s in self.limits if s.state == "soft_exceeded")

    @property
    def resets_at(self) -> datetime | None:
        return self.blocked_by.resets_at if self.blocked_by else None

    def remaining(self, scope: Scope | str, metric: Metric | str) -> int | None:
        """Smallest remaining amount of ``metric`` over the limits of ``scope``."""
        key = str(scope)
        met = Metric(metric)
        values = [s.remaining for s in self.limits if str(s.scope) == key and s.metric is met]
        return min(values) if values else None

    def __str__(self) -> str:
        if self.allowed:
            return f"allowed {self.subject}"
        if self.blocked_by is not None:
            b = self.blocked_by
            if b.used is None or b.reserved is None:
                taken = f"taken {_money(b.metric, b.taken)}"
            else:
                taken = (f"used {_money(b.metric, b.used)}, "
                         f"reserved {_money(b.metric, b.reserved)}")
            if b.kind == "rate":
                what = f"rate {b.metric.value} {b.period} of {b.scope}"
                limit = f"limit {b.limit} {b.period}, burst {b.burst}"
            else:
                what = f"budget {b.metric.value} per {b.period} of {b.scope}"
                limit = f"limit {_money(b.metric, b.limit)}"
            return (f"denied {self.subject}: {what} ({limit}, {taken}, "
                    f"requested {_money(b.metric, b.requested)})")
        return f"denied {self.subject}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "subject": _text(self.subject),
            "reservation_id": self.reservation.id if self.reservation else None,
            "expires_at": ms_text(self.reservation.expires_ms) if self.reservation else None,
            "blocked_by": self.blocked_by.to_dict() if self.blocked_by else None,
            "retry_after": self.retry_after,
            "reason": self.reason,
            "degraded": self.degraded,
            "limits": [s.to_dict() for s in self.limits],
        }


@dataclass(frozen=True, slots=True)
class ThresholdCrossing:
    """A soft threshold crossed by committed usage (fires once per scope/metric/period)."""

    scope: Scope
    metric: Metric
    period: str
    period_id: str
    threshold: int
    used: int
    limit: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": str(self.scope),
            "metric": self.metric.value,
            "period": self.period,
            "period_id": self.period_id,
            "threshold": self.threshold,
            "used": _money(self.metric, self.used),
            "limit": _money(self.metric, self.limit),
        }


@dataclass(frozen=True, slots=True)
class SettleResult:
    """Result of commit, release or record."""

    status: SettleStatus
    id: str
    actual: Amounts | None = None
    overshoot: bool = False
    thresholds: tuple[ThresholdCrossing, ...] = ()

    @property
    def cost_usd(self) -> Decimal | None:
        return self.actual.cost_usd if self.actual else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "id": self.id,
            "cost": str(self.actual.cost_usd) if self.actual else None,
            "overshoot": self.overshoot,
            "thresholds": [t.to_dict() for t in self.thresholds],
        }
