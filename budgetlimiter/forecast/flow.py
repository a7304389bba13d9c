"""``forecast(scope)``: one flow both clients drive (read the scope's counters, project each
budget)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.calls import Flow
from ..engine.engine import Engine
from ..policy.periods import PeriodKind, window_at
from ..results import LimitStatus
from ..subject import Scope
from .projection import WINDOW_MS, Forecast, Point, project
from .samples import SampleBook

__all__ = ["History", "ScopeForecast", "forecast_flow", "forecast_limits"]

#: earlier readings per (metric, period id), e.g. from :func:`ledger_history`
History = Mapping[tuple[str, str], Sequence[Point]]


@dataclass(frozen=True, slots=True)
class ScopeForecast:
    """The live limits of one scope and, aligned with them, each budget's forecast (``None``
    for rate limits)."""

    scope: Scope
    limits: tuple[LimitStatus, ...]
    forecasts: tuple[Forecast | None, ...]

    def budgets(self) -> list[tuple[LimitStatus, Forecast]]:
        """The budgets with their forecasts."""
        return [(s, f) for s, f in zip(self.limits, self.forecasts, strict=True)
                if f is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"scope": str(self.scope),
                "forecasts": [f.to_dict() for _, f in self.budgets()]}


def forecast_limits(engine: Engine, samples: SampleBook, scope: Scope,
                    limits: Sequence[LimitStatus], now_ms: int,
                    history: History | None = None) -> ScopeForecast:
    """Project every budget of ``limits`` (read at ``now_ms``) and keep the reading in
    ``samples`` for the next forecast."""
    policy = engine.policy
    tz, week_start = policy.timezone_for(scope.org), policy.week_start_index()
    out: list[Forecast | None] = []
    for s in limits:
        if s.kind != "budget":
            out.append(None)
            continue
        kind = PeriodKind(s.period)
        w = window_at(kind, now_ms, tz, week_start)
        key = (str(s.scope), s.metric.value, w.id)
        used = s.used if s.used is not None else s.taken
        observed = samples.points(key)
        if history:
            observed += history.get((s.metric.value, w.id), ())
        out.append(project(scope=s.scope, metric=s.metric, kind=kind, period_id=w.id,
                           used=used, limit=s.limit, start_ms=w.start_ms, end_ms=w.end_ms,
                           now_ms=now_ms, observed=observed))
        samples.observe(key, now_ms, used, WINDOW_MS[kind])
    return ScopeForecast(scope, tuple(limits), tuple(out))


def forecast_flow(engine: Engine, samples: SampleBook, scope: Scope | str,
                  history: History | None = None) -> Flow[ScopeForecast]:
    """Read ``scope``'s counters (one round trip, as ``scope_status``) and project them."""
    target = scope if isinstance(scope, Scope) else Scope.parse(scope)
    limits = yield from engine.scope_status(target)
    return forecast_limits(engine, samples, target, limits, engine.now(), history)
