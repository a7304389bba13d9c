"""The durable ledger's daily totals of a scope as forecast readings (synchronous SQL)."""

from __future__ import annotations

from typing import Any

from ..durable.store.reports import trend
from ..engine.engine import Engine
from ..policy.periods import PeriodKind, window_at, windows_between
from ..subject import Scope
from .flow import History
from .projection import Point

__all__ = ["ledger_history"]


def ledger_history(store: Any, engine: Engine, scope: Scope | str, now_ms: int) -> History:
    """Readings of ``scope``'s week and month budgets from the durable ledger: the usage
    recorded up to each local midnight of the current period (days before today only: today's
    row lags the live counter). Synchronous SQL (run it in a thread from asyncio)."""
    target = scope if isinstance(scope, Scope) else Scope.parse(scope)
    sl = engine.planners.core.scope_limits(target)
    if sl is None:
        return {}
    policy = engine.policy
    tz, week_start = policy.timezone_for(target.org), policy.week_start_index()
    today = window_at(PeriodKind.DAY, now_ms, tz, week_start)
    out: dict[tuple[str, str], list[Point]] = {}
    for spec in sl.limits:
        if spec.period not in (PeriodKind.WEEK, PeriodKind.MONTH):
            continue
        w = window_at(spec.period, now_ms, tz, week_start)
        days = list(windows_between(PeriodKind.DAY, w.start_ms, today.start_ms, tz,
                                    week_start))
        if not days:
            continue
        series = dict(trend(store, target, spec.metric, "day", days[0].id, days[-1].id))
        total, points = 0, []
        for d in days:
            total += series.get(d.id, 0)
            # the zero-filled days before the first usage are not readings: the ledger
            # cannot tell "nothing was used" from "nothing was deployed yet"
            if total:
                points.append((d.end_ms, total))
        out[(spec.metric.value, w.id)] = points
    return out
