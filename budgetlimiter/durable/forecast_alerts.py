"""Forecast alerts: ``budget.forecast_exceeded`` when a budget's forecast first reaches its
limit, through the same durable outbox as threshold crossings.

The reconciler calls :meth:`ForecastAlerts.run_org` in every pass; at most every ``every_s``
seconds (of the limiter's clock) it forecasts the org's scopes with counters whose budgets
have ``forecast_alert`` on (default: hard limits). The forecasts use the reconciler's own
readings (one per evaluation, so a day budget has a forecast once the reconciler has watched
it for half the window) plus the ledger's closed days for weeks and months.

**Exactly once.** An event is an :class:`~budgetlimiter.durable.store.records.AlertEvent`
whose threshold is :data:`~budgetlimiter.durable.store.records.FORECAST_THRESHOLD`; its id
depends only on (scope, metric, period, period id), and the outbox inserts an id once, so
several reconcilers, restarts and repeated passes give one event per budget and period. A
budget already used up is not forecast-alerted (its 100 % threshold says it); without
enough data nothing fires (never from a guess).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..engine.engine import Engine
from ..forecast import History, ScopeForecast
from ..forecast.ledger import ledger_history
from ..policy.periods import PeriodKind, window_at
from ..subject import Scope
from .store.records import FORECAST_THRESHOLD, AlertEvent
from .store.sql import Store

log = logging.getLogger("budgetlimiter.reconciler")

#: counter keys read per org and evaluation to find its scopes
MAX_KEYS = 100_000
_MAX_REMEMBERED = 100_000


def forecast_events(engine: Engine, result: ScopeForecast) -> list[AlertEvent]:
    """The forecast events ``result`` calls for: budgets with ``forecast_alert`` on whose
    forecast (with enough data) reaches the limit before they are used up."""
    sl = engine.planners.core.scope_limits(result.scope)
    if sl is None:
        return []
    alerting = {spec.key for spec in sl.limits if spec.alerts_on_forecast}
    out = []
    for status, f in result.budgets():
        if (status.metric, PeriodKind(status.period)) not in alerting:
            continue
        if f.projected is None or not f.will_exceed or f.used >= f.limit or f.limit <= 0:
            continue
        out.append(AlertEvent(org=result.scope.org, scope=str(result.scope),
                              metric=f.metric.value, period=f.period, period_id=f.period_id,
                              threshold=FORECAST_THRESHOLD, used=f.projected, limit=f.limit,
                              occurred_ms=f.now_ms))
    return out


class ForecastAlerts:
    """Evaluates forecast alerts for a reconciler (``limiter``: a sync client)."""

    def __init__(self, limiter: Any, store: Store, sinks: Sequence[str], *,
                 every_s: float = 10.0) -> None:
        self.limiter = limiter
        self.store = store
        self.sinks = list(sinks)
        self.every_ms = int(every_s * 1000)
        self._last: dict[str, int] = {}
        self._fired: set[str] = set()
        self._ledger: dict[tuple[str, str], History] = {}

    def _alerting_scopes(self, org: str) -> list[Scope]:
        core = self.limiter.engine.planners.core
        out = []
        for sc in self.limiter.live_scopes(org, limit=MAX_KEYS):
            sl = core.scope_limits(sc)
            if sl is not None and any(spec.alerts_on_forecast for spec in sl.limits):
                out.append(sc)
        return out

    def _history(self, scope: Scope, now: int) -> History:
        engine: Engine = self.limiter.engine
        policy = engine.policy
        day = window_at(PeriodKind.DAY, now, policy.timezone_for(scope.org),
                        policy.week_start_index()).id
        key = (str(scope), day)
        if key not in self._ledger:
            if len(self._ledger) >= _MAX_REMEMBERED:
                self._ledger.clear()
            self._ledger[key] = ledger_history(self.store, engine, scope, now)
        return self._ledger[key]

    def run_org(self, org: str) -> int:
        """Forecast ``org``'s alerting scopes if it is time; returns how many events were new
        in the outbox."""
        now = self.limiter.clock()
        last = self._last.get(org)
        if last is not None and 0 <= now - last < self.every_ms:
            return 0
        self._last[org] = now
        events: list[AlertEvent] = []
        for sc in self._alerting_scopes(org):
            result = self.limiter.forecast(sc, self._history(sc, now))
            events += [e for e in forecast_events(self.limiter.engine, result)
                       if e.id not in self._fired]
        if not events:
            return 0
        new = self.store.record_alerts(events, self.sinks, now)
        if len(self._fired) >= _MAX_REMEMBERED:
            self._fired.clear()
        self._fired.update(e.id for e in events)
        for e in events:
            log.info("forecast of %s %s per %s reaches its limit (%s)", e.scope, e.metric,
                     e.period, e.period_id)
        return new
