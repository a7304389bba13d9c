"""Commands on the durable store: reconcile, report, alerts."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import date, timedelta
from typing import Any

import click

from ..subject import Scope
from ..usage import Metric, micros_to_usd
from .context import EXIT_INPUT, LOG_HANDLER, Context, redacted
from .output import bar, render, sparkline


def webhook_options(fn: Any) -> Any:
    """``--webhook URL`` (repeatable) and ``--webhook-secret-env`` (reconcile and serve)."""
    fn = click.option("--webhook-secret-env", default="BUDGETLIMITER_WEBHOOK_SECRET",
                      show_default=True,
                      help="Environment variable holding the signing secret.")(fn)
    fn = click.option("--webhook", "webhooks", multiple=True, metavar="URL",
                      help="Deliver alerts to this URL (repeatable).")(fn)
    return fn


def webhook_secret(webhooks: tuple[str, ...], secret_env: str) -> str | None:
    """The signing secret from ``$secret_env``; exit 2 when webhooks are given without it."""
    secret = os.environ.get(secret_env)
    if webhooks and not secret:
        click.echo(f"error: --webhook needs a signing secret in ${secret_env}", err=True)
        raise SystemExit(EXIT_INPUT)
    return secret


@click.command()
@click.option("--interval", type=float, default=2.0, show_default=True,
              help="Seconds between passes: the most usage Redis can lose.")
@click.option("--lease", type=float, default=6.0, show_default=True,
              help="Seconds an org lease lasts: with several reconcilers (or sidecars with "
              "--db) each org is reconciled by one of them, taken over this long after its "
              "holder dies (0: no leases, reconcile every org here).")
@click.option("--once", is_flag=True, help="One pass over every org (no leases), then exit.")
@webhook_options
@click.pass_obj
def reconcile(obj: Context, interval: float, lease: float, once: bool,
              webhooks: tuple[str, ...], webhook_secret_env: str) -> None:
    """Flush usage to SQL, restore Redis after data loss, and deliver alerts."""
    from ..durable.service import ReconcileService, build_sinks

    # the loop logs what it does (INFO, through the root logger), errors included
    logging.getLogger("budgetlimiter").removeHandler(LOG_HANDLER)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sinks = build_sinks(webhooks, webhook_secret(webhooks, webhook_secret_env))
    store = obj.store()
    store_url = obj.db_url or ""
    service = ReconcileService(obj.limiter(), store, sinks, interval=interval,
                               lease_s=None if once or lease <= 0 else lease,
                               policy_file=obj.policy_path)
    if once:
        stats, delivered = service.run_once()
        row = {"orgs": stats.orgs, "flushes": stats.flushes, "rows": stats.rows,
               "restored": len(stats.restored), "events": stats.events,
               "delivered": delivered}
        click.echo(render([row], obj.fmt, ", ".join(f"{k} {v}" for k, v in row.items())))
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stop_event.set())
    click.echo(f"reconciling every {interval:g}s into {redacted(store_url)} "
               f"(sinks: {', '.join(sinks)}; holder {service.holder}); Ctrl-C flushes and "
               "stops", err=True)
    service.run()


def _days(first: str | None, last: str | None) -> tuple[str, str]:
    today = date.today()
    try:
        end = date.fromisoformat(last) if last else today
        start = date.fromisoformat(first) if first else end - timedelta(days=29)
    except ValueError as exc:
        raise click.BadParameter(f"dates are YYYY-MM-DD: {exc}") from None
    if start > end:
        raise click.BadParameter("--from is after --to")
    return start.isoformat(), end.isoformat()


def _money_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        if "cost" in r:
            r["cost"] = str(micros_to_usd(int(r["cost"])))
        out.append(r)
    return out


def _with_bars(rows: list[dict[str, Any]], obj: Context) -> list[dict[str, Any]]:
    if obj.fmt != "table" or not rows:
        return rows
    # adjustment rows can be negative (credits): they get an empty bar
    top = max(0.0, *(float(r["cost"]) for r in rows)) or 1.0
    return [{**r, "share": bar(float(r["cost"]) / top, 20)} for r in rows]


@click.group()
def report() -> None:
    """Reports from the durable store (flushed usage)."""


def _range_options(fn: Any) -> Any:
    fn = click.option("--to", "last", default=None, help="Last day, YYYY-MM-DD (today).")(fn)
    fn = click.option("--from", "first", default=None, help="First day (30 days back).")(fn)
    return fn


@report.command("agents")
@click.option("--org", required=True)
@_range_options
@click.pass_obj
def report_agents(obj: Context, org: str, first: str | None, last: str | None) -> None:
    """Usage breakdown by agent."""
    from ..durable.store.reports import usage_by_agent

    a, b = _days(first, last)
    click.echo(render(_with_bars(_money_rows(usage_by_agent(obj.store(), org, a, b)), obj),
                      obj.fmt))


@report.command("teams")
@click.option("--org", required=True)
@_range_options
@click.pass_obj
def report_teams(obj: Context, org: str, first: str | None, last: str | None) -> None:
    """Cost attribution by team."""
    from ..durable.store.reports import cost_by_team

    a, b = _days(first, last)
    click.echo(render(_with_bars(_money_rows(cost_by_team(obj.store(), org, a, b)), obj),
                      obj.fmt))


@report.command("users")
@click.option("--org", required=True)
@click.option("--team", default=None)
@_range_options
@click.pass_obj
def report_users(obj: Context, org: str, team: str | None, first: str | None,
                 last: str | None) -> None:
    """Cost attribution by user (optionally within one team)."""
    from ..durable.store.reports import cost_by_user

    a, b = _days(first, last)
    rows = cost_by_user(obj.store(), org, a, b, team=team)
    click.echo(render(_with_bars(_money_rows(rows), obj), obj.fmt))


@report.command("trend")
@click.argument("scope")
@click.option("--metric", type=click.Choice([m.value for m in Metric]), default="cost",
              show_default=True)
@click.option("--granularity", type=click.Choice(["day", "week", "month"]), default="day",
              show_default=True)
@_range_options
@click.pass_obj
def report_trend(obj: Context, scope: str, metric: str, granularity: str,
                 first: str | None, last: str | None) -> None:
    """A scope's usage over time, as a chart in the terminal."""
    from ..durable.store.reports import trend

    a, b = _days(first, last)
    target = Scope.parse(scope)
    met = Metric(metric)
    week_start = obj.policy().week_start_index() if obj.policy_path else 0
    series = trend(obj.store(), target, met, granularity, a, b, week_start=week_start)
    def show(v: int) -> str:
        return str(micros_to_usd(v)) if met is Metric.COST else str(v)

    rows = [{"period": p, metric: show(v)} for p, v in series]
    if obj.fmt != "table":
        click.echo(render(rows, obj.fmt))
        return
    top = max(0, *(v for _, v in series)) or 1
    lines = [f"{target} {metric} per {granularity}, {a} .. {b}",
             f"  {sparkline([v for _, v in series])}", ""]
    width = max((len(show(v)) for _, v in series), default=1)
    for p, v in series:
        lines.append(f"  {p:<10} {show(v):>{width}}  {bar(v / top, 30)}".rstrip())
    click.echo("\n".join(lines))


@click.group()
def alerts() -> None:
    """The alert outbox: deliveries and dead letters."""


@alerts.command("list")
@click.option("--state", type=click.Choice(["pending", "delivered", "dead"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_obj
def alerts_list(obj: Context, state: str | None, limit: int) -> None:
    """Deliveries with their state, attempts and last error."""
    rows = [{"event": d.event.id, "sink": d.sink, "state": d.state, "attempts": d.attempts,
             "scope": d.event.scope, "metric": d.event.metric, "period": d.event.period,
             "threshold": d.event.threshold, "error": d.last_error[:60]}
            for d in obj.store().deliveries(state, limit)]
    click.echo(render(rows, obj.fmt))


@alerts.command("requeue")
@click.argument("event_id", required=False)
@click.pass_obj
def alerts_requeue(obj: Context, event_id: str | None) -> None:
    """Put dead-lettered deliveries back in the queue (all, or one event)."""
    import time

    n = obj.store().requeue_dead(event_id, int(time.time() * 1000))
    click.echo(render([{"requeued": n}], obj.fmt, f"requeued {n} deliveries"))


@click.command()
@click.option("--org", "orgs", multiple=True, help="Only these orgs (default: every org the "
              "store knows).")
@click.pass_obj
def restore(obj: Context, orgs: tuple[str, ...]) -> None:
    """Rebuild Redis counters from the durable record now (normally the reconciler does this
    by itself when it notices lost data)."""
    from ..durable.reconciler import Reconciler

    store = obj.store()
    rec = Reconciler(obj.limiter(), store)
    targets = list(orgs) or store.known_orgs()
    raised = 0
    progress: Any = click.progressbar(targets, label="restoring orgs", show_pos=True,
                                      file=sys.stderr)
    with progress as orgs_iter:
        for org in orgs_iter:
            raised += rec.restore_org(org)
    click.echo(render([{"orgs": len(targets), "counters_raised": raised}], obj.fmt,
                      f"restored {len(targets)} orgs, {raised} counters raised"))
