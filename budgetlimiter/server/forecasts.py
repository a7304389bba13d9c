"""The sidecar's forecasts: ``GET /v1/forecast/{scope}``, the dashboard's forecast per limit,
and the per-scope budget gauges of ``/metrics`` (and of the OpenTelemetry export).

Every forecast goes through the process's one asyncio client, so its in-process readings
(every forecast, dashboard refresh and scrape adds one) serve all three. With a database,
the ledger's daily totals of the current week and month are added; they are read once per
scope and local day (closed days do not change) and kept in a bounded cache.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..forecast import Forecast, History, ScopeForecast
from ..forecast.ledger import ledger_history
from ..policy.periods import PeriodKind, window_at
from ..subject import Scope

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")

#: scopes whose ledger history is cached (per local day)
MAX_CACHED = 5_000
#: scopes read per scrape to find the ones worth a gauge
MAX_SCOPES_READ = 2_000


def limit_forecast(f: Forecast | None) -> dict[str, Any] | None:
    """The ``forecast`` object of one limit in ``GET /v1/ui/tree`` (``None``: rate limit)."""
    if f is None:
        return None
    return {"projected": f.amount(f.projected), "period_end": f.period_end.isoformat(),
            "exhausts_at": None if f.exhausts_at is None else f.exhausts_at.isoformat(),
            "will_exceed": f.will_exceed, "window_seconds": f.window_ms // 1000}


@dataclass(frozen=True, slots=True)
class BudgetGauge:
    """One budget of one scope as the gauges show it (amounts in the metric's unit)."""

    org: str
    scope: str
    metric: str
    period: str
    used: int
    limit: int
    projected: int | None
    blocked: bool
    will_exceed: bool
    percent: float


@dataclass(frozen=True, slots=True)
class GaugeSnapshot:
    """The budgets worth a gauge, and every org's count of blocked scopes."""

    budgets: tuple[BudgetGauge, ...]
    blocked_scopes: dict[str, int]


class Forecaster:
    """Forecasts of one sidecar process (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._ledger: dict[tuple[str, str], History] = {}

    async def _history(self, scope: Scope) -> History | None:
        s = self.server
        if not s.config.db_url and s._store is None:
            return None
        limiter = s.require_limiter()
        now = limiter.clock()
        policy = limiter.policy
        day = window_at(PeriodKind.DAY, now, policy.timezone_for(scope.org),
                        policy.week_start_index()).id
        key = (str(scope), day)
        if key not in self._ledger:
            try:
                store = await s.store()
                history = await run_in_threadpool(ledger_history, store, limiter.engine, scope,
                                                  now)
            except Exception as exc:  # a broken database must not break the live forecast
                log.debug("ledger history of %s skipped: %s", scope, exc)
                return None
            if len(self._ledger) >= MAX_CACHED:
                self._ledger.clear()
            self._ledger[key] = history
        return self._ledger[key]

    async def scope(self, scope: Scope) -> ScopeForecast:
        """Live limits and forecasts of ``scope``."""
        history = await self._history(scope)
        return await self.server.require_limiter().forecast(scope, history)

    async def snapshot(self, *, listed: tuple[str, ...] = (), min_percent: float = 50.0,
                       max_budgets: int = 200) -> GaugeSnapshot:
        """Budgets for the gauges, bounded: those of the ``listed`` scopes first, then blocked
        ones, then those forecast to reach their limit, then by percent used (at least
        ``min_percent``), at most ``max_budgets`` in all. Blocked scopes are counted among
        the scopes of the first :data:`MAX_SCOPES_READ` counter keys (any org) and the
        declared ones; every declared org has a count, 0 included."""
        limiter = self.server.require_limiter()
        # every org with counters, declared or not (a policy of defaults only declares none)
        found = await limiter.live_scopes(None, limit=MAX_SCOPES_READ)
        wanted = {Scope.parse(t) for t in listed}
        scopes = sorted(set(found[:MAX_SCOPES_READ]) | wanted, key=str)
        results = await asyncio.gather(*(self.scope(sc) for sc in scopes))
        ranked: list[tuple[tuple[int, int, int, float], BudgetGauge]] = []
        blocked: dict[str, set[str]] = {org: set() for org in limiter.policy.declared_orgs()}
        for sc, result in zip(scopes, results, strict=True):
            for status, f in result.budgets():
                is_blocked = status.state == "blocked"
                if is_blocked:
                    blocked.setdefault(sc.org, set()).add(str(sc))
                g = BudgetGauge(sc.org, str(sc), status.metric.value, status.period, f.used,
                                status.limit, f.projected, is_blocked, f.will_exceed,
                                status.percent)
                if sc in wanted or is_blocked or f.will_exceed or g.percent >= min_percent:
                    rank = (sc not in wanted, not is_blocked, not f.will_exceed, -g.percent)
                    ranked.append((rank, g))
        ranked.sort(key=lambda t: t[0])
        return GaugeSnapshot(tuple(g for _, g in ranked[:max_budgets]),
                             {org: len(v) for org, v in blocked.items()})
