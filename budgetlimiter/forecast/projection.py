"""Where a budget is heading: burn rate, projected usage at the period's end, exhaustion time.

Pure and integer: amounts are the metric's unit (micro-USD for cost), instants epoch
milliseconds, and the clock is whatever ``now_ms`` the caller passes.

**The rate.** Linear over a trailing window: the usage added between the window's start and
now, divided by the window's length. The window is the *recent* part of the period, long
enough to contain the period's own cycle and short enough to follow a change of pace:

========  ==========  ======================================================================
period    window      why
========  ==========  ======================================================================
minute    15 s        a quarter of the period
hour      10 min      a sixth of the period
day       3 h         an eighth of the day: a batch job that starts shows within hours
week      2 days      a working week's weekday/weekend swing is not read as a trend
month     7 days      a whole weekly cycle, so weekends do not flip the forecast
========  ==========  ======================================================================

The window never reaches before the period's start (the counter starts from zero there).
Linear over a window rather than exponentially weighted because the observations are
uneven (a daily ledger row, then live samples seconds apart): a weighted average of uneven
segments would weigh the sampling, not the spending; a difference of two cumulative readings
does not care how many readings lie between them, and it stays exact in integers.

**Enough data.** A forecast is given only when the window is at least half its nominal length
and the observations around it are dense: the window's start is interpolated between two
observations, and no two consecutive observations used (the pair around the window's start,
those inside the window, and now) are further apart than half the window. Two readings (the
period's start and now) never qualify, so an early burst is never extrapolated over a whole
month. Otherwise the forecast is ``None`` with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..policy.periods import PeriodKind
from ..results import ms_to_datetime
from ..subject import Scope
from ..usage import Metric, micros_to_usd

__all__ = ["WINDOW_MS", "Forecast", "Point", "duration", "project"]

#: (epoch ms, cumulative usage in the period at that instant)
Point = tuple[int, int]

_MIN = 60_000
_HOUR = 60 * _MIN
_DAY = 24 * _HOUR
#: the trailing window of each period kind (see the module docstring for why)
WINDOW_MS: dict[PeriodKind, int] = {
    PeriodKind.MINUTE: 15_000,
    PeriodKind.HOUR: 10 * _MIN,
    PeriodKind.DAY: 3 * _HOUR,
    PeriodKind.WEEK: 2 * _DAY,
    PeriodKind.MONTH: 7 * _DAY,
}


@dataclass(frozen=True, slots=True)
class Forecast:
    """The projection of one budget (one scope, metric and period) to its period's end.

    ``projected`` (usage at ``period_end``), ``exhausts_ms`` and ``rate_per_hour`` are
    integers in the metric's unit, or ``None`` when there was too little data (``reason``
    says what was missing). ``exhausts_ms`` is also ``None`` when the budget lasts the period
    at the current pace; it is ``now`` for a budget already used up. ``window_ms`` is the
    length the rate was measured over (0 without a forecast).
    """

    scope: Scope
    metric: Metric
    period: str
    period_id: str
    used: int
    limit: int
    now_ms: int
    period_start_ms: int
    period_end_ms: int
    window_ms: int
    projected: int | None
    exhausts_ms: int | None
    rate_per_hour: int | None
    points: int
    reason: str = ""

    @property
    def will_exceed(self) -> bool:
        """Whether the projection reaches the limit by the period's end (a hard budget at its
        limit blocks the next call)."""
        return self.projected is not None and self.projected >= self.limit

    @property
    def period_end(self) -> datetime:
        return ms_to_datetime(self.period_end_ms)

    @property
    def exhausts_at(self) -> datetime | None:
        return None if self.exhausts_ms is None else ms_to_datetime(self.exhausts_ms)

    def amount(self, units: int | None) -> str | None:
        """``units`` as the API shows the metric: decimal USD for cost, a count otherwise."""
        if units is None:
            return None
        return format(micros_to_usd(units), "f") if self.metric is Metric.COST else str(units)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as decimal strings in the metric's unit, times ISO 8601."""
        return {
            "scope": str(self.scope), "metric": self.metric.value, "period": self.period,
            "period_id": self.period_id, "used": self.amount(self.used),
            "limit": self.amount(self.limit), "projected": self.amount(self.projected),
            "rate_per_hour": self.amount(self.rate_per_hour),
            "period_end": self.period_end.isoformat(),
            "exhausts_at": None if self.exhausts_at is None else self.exhausts_at.isoformat(),
            "will_exceed": self.will_exceed, "window_seconds": self.window_ms // 1000,
            "points": self.points, "reason": self.reason or None,
        }


def duration(ms: int) -> str:
    """``ms`` for people: ``2d06h``, ``3h10m``, ``45s``."""
    sec = max(0, ms) // 1000
    if sec >= 86_400:
        return f"{sec // 86_400}d{sec % 86_400 // 3600:02d}h"
    if sec >= 3600:
        return f"{sec // 3600}h{sec % 3600 // 60:02d}m"
    if sec >= 60:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec}s"


def _at(points: Sequence[Point], t: int) -> tuple[int, int]:
    """Usage at ``t`` interpolated between the observations around it, and the distance
    between those two observations. ``points[0]`` is at or before ``t``."""
    before = points[0]
    for p in points[1:]:
        if p[0] >= t:
            span = p[0] - before[0]
            if span <= 0:
                return p[1], 0
            return before[1] + (p[1] - before[1]) * (t - before[0]) // span, span
        before = p
    return before[1], 0


def project(*, scope: Scope, metric: Metric, kind: PeriodKind, period_id: str, used: int,
            limit: int, start_ms: int, end_ms: int, now_ms: int,
            observed: Sequence[Point] = ()) -> Forecast:
    """Project ``used`` (the live counter at ``now_ms``) to ``end_ms``.

    ``observed`` are earlier readings of the same counter in this period (a sampler's, the
    ledger's daily totals), in any order; readings outside ``[start_ms, now_ms)`` are ignored.
    The counter is zero at ``start_ms``.
    """
    window = WINDOW_MS[PeriodKind(kind)]
    inside = sorted({p for p in observed if start_ms < p[0] < now_ms})
    # a reading above a later one (a credit since) would make the past look bigger than now
    points = [(start_ms, 0), *((t, min(u, used)) for t, u in inside), (now_ms, used)]

    def none(reason: str, span: int = 0) -> Forecast:
        return Forecast(scope, metric, kind.value, period_id, used, limit, now_ms, start_ms,
                        end_ms, span, None, None, None, len(points), reason)

    w_start = max(start_ms, now_ms - window)
    span = now_ms - w_start
    if 2 * span < window:
        return none(f"the period started {duration(span)} ago; the rate needs "
                    f"{duration(window // 2)} of it")
    first = max(i for i, p in enumerate(points) if p[0] <= w_start)
    used_points = points[first:]
    gap = max(b[0] - a[0] for a, b in itertools.pairwise(used_points))
    if 2 * gap > span:
        return none(f"readings {duration(gap)} apart; a {duration(span)} window needs them "
                    f"at most {duration(span // 2)} apart")
    at_start, _ = _at(used_points, w_start)
    added = max(0, used - at_start)
    projected = used + added * (end_ms - now_ms) // span
    exhausts: int | None
    if used >= limit:
        exhausts = now_ms
    elif added == 0:
        exhausts = None
    else:
        exhausts = now_ms + -(-(limit - used) * span // added)
        if exhausts >= end_ms:
            exhausts = None
    return Forecast(scope, metric, kind.value, period_id, used, limit, now_ms, start_ms, end_ms,
                    span, projected, exhausts, added * _HOUR // span, len(points))
