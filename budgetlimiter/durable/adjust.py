"""Audited operator adjustments: kept in the durable store, applied to live counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..engine.calls import ScriptCall
from ..policy.periods import PeriodKind, window_at
from ..subject import Scope
from ..usage import Metric
from .store.records import Adjustment


def apply_adjustment(limiter: Any, store: Any, scope: Scope, metric: Metric, units: int,
                     who: str, why: str) -> Adjustment:
    """Record the adjustment durably, then apply it to the scope's current counters of
    ``metric`` (every period). Restores after data loss replay it from the store."""
    core = limiter.engine.planners.core
    now = limiter.clock()
    tz = core.policy.timezone_for(scope.org)
    ws = core.policy.week_start_index()
    day = datetime.fromtimestamp(now / 1000, tz).date().isoformat()
    adj = Adjustment(org=scope.org, scope=str(scope), metric=metric.value, amount=units,
                     day=day, who=who, why=why, at_ms=now)
    adj_id = store.add_adjustment(adj)
    sl = core.scope_limits(scope)
    keys: list[str] = []
    expires: list[str | int] = []
    retention = core.policy.retention_seconds * 1000
    for spec in (sl.limits if sl else ()):
        if spec.metric is metric and spec.period in (PeriodKind.DAY, PeriodKind.WEEK,
                                                      PeriodKind.MONTH, PeriodKind.HOUR,
                                                      PeriodKind.MINUTE):
            w = window_at(spec.period, now, tz, ws)
            keys.append(core.keys.counter(scope, w))
            expires.append(w.end_ms + retention)
    if keys:
        limiter.execute(ScriptCall("adjust", keys, [now, metric.code, units, *expires],
                                   lambda reply: reply))
    return Adjustment(org=adj.org, scope=adj.scope, metric=adj.metric, amount=adj.amount,
                      day=adj.day, who=adj.who, why=adj.why, at_ms=adj.at_ms, id=adj_id)
