"""Current period status merged from Redis (live) and SQL (history), for one scope.

The durable record lags Redis by at most one reconcile interval; for the current period the
live counter is the truth (it includes unflushed usage), for earlier periods the record is.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .durable.store.reports import trend
from .subject import Scope
from .usage import Metric


def scope_overview(limiter: Any, store: Any, scope: Scope | str, metric: Metric | str,
                   granularity: str = "day", periods: int = 30) -> dict[str, Any]:
    """Live limits of ``scope`` plus a history series of ``metric`` whose current entry is
    replaced by the live figure when Redis knows more than SQL (unflushed usage).

    Returns ``{"scope", "metric", "granularity", "live": [limit dicts], "history":
    [(period label, amount)]}`` with amounts as integers (cost in micro-USD).
    """
    target = scope if isinstance(scope, Scope) else Scope.parse(scope)
    met = Metric(metric)
    live = limiter.scope_status(target)
    policy = limiter.policy
    tz = policy.timezone_for(target.org)
    today = datetime.fromtimestamp(limiter.clock() / 1000, tz).date()
    span = {"day": 1, "week": 7, "month": 31}[granularity] * periods
    first = today - timedelta(days=span - 1)
    series = trend(store, target, met, granularity, first.isoformat(), today.isoformat(),
                   week_start=policy.week_start_index())
    current = [s for s in live if s.kind == "budget" and s.metric is met
               and s.period == granularity]
    if series and current:
        label, recorded = series[-1]
        series[-1] = (label, max(recorded, current[0].used or 0))
    return {
        "scope": str(target),
        "metric": met.value,
        "granularity": granularity,
        "live": [s.to_dict() for s in live],
        "history": series,
    }
