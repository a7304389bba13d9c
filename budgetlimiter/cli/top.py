"""``top``: the scopes closest to their limits, and how fast each is spending.

The rate (``per_min``) is measured, never guessed: ``top`` reads every budget twice,
``--interval`` seconds apart, and reports the growth of its committed usage (``used``)
between the two reads, per minute. Reservations do not count until they are committed; a
credit or a period that ended between the two reads shows 0. With ``--watch`` each refresh
measures over the time since the previous one. Rate limits have no ``per_min`` (their
``used`` is the burst currently taken, not a total). ``exhausts`` is the budget's forecast
(see :mod:`budgetlimiter.cli.forecast`): each refresh of ``--watch`` adds a reading.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import click

from ..forecast import Forecast, ScopeForecast
from ..subject import Scope
from ..usage import Metric
from .context import Context
from .forecast import exhausts, scope_forecast
from .live import live_scopes
from .output import bar, render

#: (scope, metric, period) -> (used, monotonic time of the read)
Sample = dict[tuple[str, str, str], tuple[int, float]]


def read(obj: Context, limiter: Any, org: str | None
         ) -> tuple[list[tuple[Any, Forecast | None]], Sample]:
    """Every limit of every live scope (of ``org``) with its forecast, and the budgets' usage
    at this moment."""
    prefix = Scope(org) if org is not None else None
    statuses = [pair for sc in live_scopes(limiter, prefix)
                for pair in _pairs(scope_forecast(obj, limiter, sc))]
    now = time.monotonic()
    sample = {(str(s.scope), s.metric.value, s.period): (s.used or 0, now)
              for s, _ in statuses if s.kind == "budget"}
    return statuses, sample


def _pairs(result: ScopeForecast) -> list[tuple[Any, Forecast | None]]:
    return list(zip(result.limits, result.forecasts, strict=True))


def per_minute(status: Any, before: Sample | None, after: Sample) -> tuple[str, float]:
    """The budget's committed usage per minute between two reads ("" for rate limits, and
    without a first read)."""
    key = (str(status.scope), status.metric.value, status.period)
    if before is None or key not in after:
        return "", 0.0
    used, then = after[key]
    if key in before:
        was, since = before[key]
        rate = max(0, used - was) / max(1e-6, then - since) * 60
    else:  # a budget that first got a counter between the two reads
        rate = 0.0
    if status.metric is Metric.COST:
        return str(Decimal(round(rate)).scaleb(-6).quantize(Decimal("0.000001"))), rate
    return f"{rate:.0f}", rate


def rows(statuses: list[tuple[Any, Forecast | None]], before: Sample | None, after: Sample,
         limit: int, with_bar: bool) -> list[dict[str, Any]]:
    out = []
    for s, f in statuses:
        per_min, rate = per_minute(s, before, after)
        d = s.to_dict()
        row: dict[str, Any] = {"scope": d["scope"], "metric": d["metric"],
                               "period": d["period"], "used": d["used"], "limit": d["limit"],
                               "percent": d["percent"], "per_min": per_min,
                               "exhausts": exhausts(f)}
        if with_bar:
            row["bar"] = bar(min(1.0, s.percent / 100), 16)
        row["state"] = d["state"]
        out.append((s.percent, rate, row))
    out.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [row for _, _, row in out[:limit]]


@click.command()
@click.option("--org", default=None, help="Only this org's scopes (default: every org).")
@click.option("--limit", "-n", type=int, default=15, show_default=True)
@click.option("--interval", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds between the two reads that measure per_min (0: no rate), and "
              "between refreshes with --watch.")
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--iterations", type=int, default=0, help="With --watch: stop after N refreshes.")
@click.pass_obj
def top(obj: Context, org: str | None, limit: int, interval: float, watch: bool,
        iterations: int) -> None:
    """The scopes closest to their limits, and their spending per minute, measured over
    --interval seconds (committed usage; see the README)."""
    if watch and not interval:
        raise click.UsageError("--watch needs an --interval above 0")
    if org is not None:
        obj.declared(org)
    limiter = obj.limiter()
    before: Sample | None = None
    if interval:
        _, before = read(obj, limiter, org)
    count = 0
    while True:
        if interval:
            time.sleep(interval)
        statuses, after = read(obj, limiter, org)
        shown = rows(statuses, before, after, limit, obj.fmt == "table")
        if watch and obj.fmt == "table":
            click.clear()
            stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
            click.echo(f"budgetlimiter top — {stamp}Z — every {interval:g}s (Ctrl-C to quit)")
        click.echo(render(shown, obj.fmt))
        count += 1
        if not watch or (iterations and count >= iterations):
            return
        before = after


__all__ = ["top"]
