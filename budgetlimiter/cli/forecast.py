"""``forecast SCOPE``, and the forecast behind the ``exhausts`` column of ``status`` and
``top``.

A command's process is short-lived, so its forecast has the readings of that process (``top
--watch`` adds one per refresh) plus, with ``--db``, the ledger's daily totals of the current
week and month; a day budget read once has too little data and shows ``unknown`` (the
sidecar, which reads its counters all day, forecasts it).
"""

from __future__ import annotations

from typing import Any

import click

from ..forecast import Forecast, ScopeForecast
from ..forecast.projection import duration
from ..subject import Scope
from .context import Context
from .output import render


def scope_forecast(obj: Context, limiter: Any, scope: Scope) -> ScopeForecast:
    """Live limits and forecasts of ``scope``, with the ledger's history when ``--db`` is
    given (best effort: an unreadable database leaves the forecast to the live readings and
    says so on stderr)."""
    history = None
    if obj.db_url:
        from ..forecast.ledger import ledger_history

        try:
            history = ledger_history(obj.store(), limiter.engine, scope, limiter.clock())
        except Exception as exc:
            click.echo(f"warning: ledger history unavailable ({type(exc).__name__}: "
                       f"{str(exc)[:200]}); forecasting from live readings only", err=True)
    result: ScopeForecast = limiter.forecast(scope, history)
    return result


def exhausts(f: Forecast | None) -> str:
    """The ``exhausts`` cell: when the budget runs out at the recent pace, ``now`` when it is
    used up, ``after reset`` if it lasts the period, ``unknown`` with too little data, empty
    for a rate limit."""
    if f is None:
        return ""
    if f.used >= f.limit:  # already used up: no pace needed to say so
        return "now"
    if f.projected is None:
        return "unknown"
    if f.exhausts_at is None:
        return "after reset"
    return "now" if f.exhausts_ms == f.now_ms else f.exhausts_at.isoformat(timespec="seconds")


def forecast_row(f: Forecast) -> dict[str, Any]:
    return {"scope": str(f.scope), "metric": f.metric.value, "period": f.period,
            "used": f.amount(f.used), "limit": f.amount(f.limit),
            "per_hour": f.amount(f.rate_per_hour), "projected": f.amount(f.projected),
            "exceeds": "yes" if f.will_exceed else "no", "exhausts": exhausts(f),
            "window": duration(f.window_ms) if f.projected is not None else "",
            "why_unknown": f.reason}


@click.command()
@click.argument("scope")
@click.pass_obj
def forecast(obj: Context, scope: str) -> None:
    """Where each budget of SCOPE is heading by its period's end: the recent pace, the
    projected usage, and when the limit is reached at that pace (see the README, "Forecasts
    and monitoring")."""
    target = Scope.parse(scope)
    obj.declared(target.org, target.team)
    limiter = obj.limiter()
    result = scope_forecast(obj, limiter, target)
    rows = [forecast_row(f) for _, f in result.budgets()]
    if not rows and obj.fmt == "table":
        click.echo(f"{target}: no budgets apply to this scope")
        return
    if rows and all(not r["why_unknown"] for r in rows):
        for r in rows:
            del r["why_unknown"]
    click.echo(render(rows, obj.fmt))


__all__ = ["exhausts", "forecast", "scope_forecast"]
