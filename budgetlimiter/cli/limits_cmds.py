"""``budgetlimiter limits set|unset|list``, ``policy history|rollback`` and ``audit``.

Each change is stored in the database as a new version of the overrides with its audit entry
(``--db`` is required), then published through Redis so that every client applies it within
two seconds. Redis unreachable after the database took the change: exit 3 with a line naming
the version (a sidecar with the database publishes it within seconds; ``budgetlimiter
restore`` does it on demand).
"""

from __future__ import annotations

import getpass
import sys
from datetime import date, datetime, timedelta, timezone
from typing import Any

import click

from ..durable import limits as ops
from ..durable.store import admin as sql
from ..engine.outage import UNAVAILABLE
from ..errors import InvalidInput, PolicyError
from ..policy.overrides import LimitKey, RateKey, parse_override, scope_limits
from ..subject import Scope
from .context import EXIT_UNAVAILABLE, Context
from .output import render

_METRICS = ["invocations", "input_tokens", "output_tokens", "total_tokens", "cost", "requests"]


def current_policy(obj: Context) -> Any:
    """The policy file with the overrides in force: from the database when ``--db`` is
    given, else as published in Redis (none with ``memory://``)."""
    policy = obj.policy()
    if obj.db_url:
        return policy.with_overrides(sql.latest_overrides(obj.store()))
    if obj.redis_url.startswith("memory://"):
        return policy
    limiter = obj.limiter()
    limiter.run(limiter.engine.poll_overrides())
    return limiter.policy


def republish_overrides(obj: Context) -> int:
    """Publish the overrides the database has in force (after Redis lost them); returns
    their version (0: none)."""
    current = sql.latest_overrides(obj.store())
    if current.version > 0:
        limiter = obj.limiter()
        limiter.execute(ops.publish_call(limiter.keys, current))
    return current.version


def _who(who: str | None) -> str:
    return who or getpass.getuser()


def _publish(obj: Context, change: sql.Change) -> None:
    limiter = obj.limiter()
    try:
        limiter.execute(ops.publish_call(limiter.keys, change.overrides))
    except UNAVAILABLE as exc:
        click.echo(f"error: stored as override version {change.overrides.version} but not "
                   f"published (Redis unreachable: {exc}); a sidecar with --db publishes it "
                   "when Redis answers, or run `budgetlimiter restore`", err=True)
        sys.exit(EXIT_UNAVAILABLE)


def _show_change(obj: Context, change: sql.Change) -> None:
    e = change.entry
    row = {"version": change.overrides.version, "action": e.action, "scope": e.scope,
           "before": "; ".join(e.before) if isinstance(e.before, list) else e.before,
           "after": "; ".join(e.after) if isinstance(e.after, list) else e.after,
           "who": e.who, "why": e.why}
    click.echo(render([row], obj.fmt))


@click.group()
def limits() -> None:
    """Change limits at runtime (overrides on top of the policy file; needs --db)."""


@limits.command("set")
@click.argument("scope")
@click.option("--metric", type=click.Choice(_METRICS), required=True)
@click.option("--amount", default=None, help="Budget amount (USD for cost).")
@click.option("--period", type=click.Choice(["minute", "hour", "day", "week", "month"]),
              default=None, help="Budget period.")
@click.option("--mode", type=click.Choice(["hard", "soft"]), default=None)
@click.option("--limit", "rate_limit", type=int, default=None, help="Rate: units per --per.")
@click.option("--per", type=click.Choice(["second", "minute", "hour"]), default=None)
@click.option("--burst", type=int, default=None, help="Rate: bucket size (default --limit).")
@click.option("--why", required=True, help="Reason, kept in the audit log.")
@click.option("--who", default=None, help="Operator (default: $USER).")
@click.option("--if-match", default=None, help="Only if the scope's ETag is still this.")
@click.pass_obj
def set_cmd(obj: Context, scope: str, metric: str, amount: str | None, period: str | None,
            mode: str | None, rate_limit: int | None, per: str | None, burst: int | None,
            why: str, who: str | None, if_match: str | None) -> None:
    """Set one budget (--amount --period) or rate (--limit --per) of SCOPE; the scope's other
    overridden entries stay."""
    target = Scope.parse(scope)
    if (period is None) == (per is None):
        raise InvalidInput("--period: give --amount with --period (a budget) or --limit with "
                           "--per (a rate limit)")
    policy = obj.policy()
    store = obj.store()
    old = sql.latest_overrides(store).get(target)
    body: dict[str, Any] = old.to_dict() if old is not None else {}
    body.setdefault("limits", [])
    body.setdefault("rates", [])
    if period is not None:
        entry: dict[str, Any] = {"metric": metric, "amount": amount, "period": period}
        if mode:
            entry["mode"] = mode
        body["limits"] = [x for x in body["limits"]
                          if (x["metric"], x["period"]) != (metric, period)] + [entry]
        body["remove_limits"] = [x for x in body.get("remove_limits", [])
                                 if (x["metric"], x["period"]) != (metric, period)]
    else:
        rate: dict[str, Any] = {"metric": metric, "limit": rate_limit, "per": per}
        if burst is not None:
            rate["burst"] = burst
        name = "invocations" if metric == "requests" else metric
        body["rates"] = [x for x in body["rates"] if (x["metric"], x["per"]) != (name, per)]
        body["rates"].append(rate)
        body["remove_rates"] = [x for x in body.get("remove_rates", [])
                                if (x["metric"], x["per"]) != (name, per)]
    try:
        override = parse_override(body)
    except PolicyError as exc:
        raise InvalidInput(f"{exc}") from None
    change = ops.set_override(store, policy, target, override, who=_who(who), why=why,
                              if_match=if_match)
    _publish(obj, change)
    _show_change(obj, change)


@limits.command("unset")
@click.argument("scope")
@click.option("--metric", type=click.Choice(_METRICS), default=None)
@click.option("--period", type=click.Choice(["minute", "hour", "day", "week", "month"]),
              default=None)
@click.option("--per", type=click.Choice(["second", "minute", "hour"]), default=None)
@click.option("--all", "everything", is_flag=True,
              help="Remove the scope's whole override (the policy file applies again).")
@click.option("--why", required=True, help="Reason, kept in the audit log.")
@click.option("--who", default=None, help="Operator (default: $USER).")
@click.option("--if-match", default=None, help="Only if the scope's ETag is still this.")
@click.pass_obj
def unset_cmd(obj: Context, scope: str, metric: str | None, period: str | None,
              per: str | None, everything: bool, why: str, who: str | None,
              if_match: str | None) -> None:
    """Take one budget (--metric --period) or rate (--metric --per) of SCOPE out of force, or
    remove its whole override (--all)."""
    target = Scope.parse(scope)
    policy, store = obj.policy(), obj.store()
    if everything:
        change = ops.clear_override(store, policy, target, who=_who(who), why=why,
                                    if_match=if_match)
    else:
        if metric is None or (period is None) == (per is None):
            raise InvalidInput("--metric: give --metric with --period or --per, or --all")
        key: LimitKey | RateKey = (LimitKey(metric=metric, period=period)  # type: ignore[arg-type]
                                   if period is not None
                                   else RateKey(metric=metric, per=per))  # type: ignore[arg-type]
        change = ops.unset_limit(store, policy, target, key, who=_who(who), why=why,
                                 if_match=if_match)
    _publish(obj, change)
    _show_change(obj, change)


@limits.command("list")
@click.option("--org", default=None, help="Only this org's scopes.")
@click.pass_obj
def list_cmd(obj: Context, org: str | None) -> None:
    """Every scope with an override, its effective limits and where each comes from."""
    current = sql.latest_overrides(obj.store())
    policy = obj.policy().with_overrides(current)
    rows: list[dict[str, Any]] = []
    for name in sorted(current.scopes):
        if current.get(name) is None or (org is not None and Scope.parse(name).org != org):
            continue
        sl = scope_limits(policy, Scope.parse(name))
        for lim, origin in zip(sl.limits, sl.limit_origins, strict=True):
            rows.append({"scope": name, "etag": current.etag(name), "kind": "budget",
                         "metric": lim.metric.value, "amount": format(lim.amount, "f"),
                         "period": lim.period.value, "mode": lim.mode.value, "from": origin})
        for r, origin in zip(sl.rates, sl.rate_origins, strict=True):
            rows.append({"scope": name, "etag": current.etag(name), "kind": "rate",
                         "metric": r.metric.value, "amount": r.limit, "period": f"per {r.per}",
                         "mode": "hard", "from": origin})
    if not rows and obj.fmt == "table":
        click.echo(f"no overrides in force (version {current.version})")
        return
    click.echo(render(rows, obj.fmt))


@click.command("history")
@click.option("-n", "limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.pass_obj
def history(obj: Context, limit: int) -> None:
    """Versions of the runtime overrides, newest first (the highest is in force)."""
    rows = [{**v.to_dict(), "at": _at(v.at_ms)} for v in sql.override_versions(obj.store(),
                                                                             limit)]
    for r in rows:
        del r["at_ms"]
    if not rows and obj.fmt == "table":
        click.echo("no override versions yet")
        return
    click.echo(render(rows, obj.fmt))


@click.command("rollback")
@click.argument("version", type=click.IntRange(0))
@click.option("--why", required=True, help="Reason, kept in the audit log.")
@click.option("--who", default=None, help="Operator (default: $USER).")
@click.pass_obj
def rollback(obj: Context, version: int, why: str, who: str | None) -> None:
    """Put the overrides of VERSION in force again (0: none), as a new version."""
    change = ops.rollback(obj.store(), obj.policy(), version, who=_who(who), why=why)
    _publish(obj, change)
    click.echo(render([{"version": change.overrides.version, "action": "policy.rollback",
                        "to": version, "scopes": change.entry.scope or "(none changed)",
                        "who": change.entry.who, "why": change.entry.why}], obj.fmt))


def _at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(value: str | None, after: int) -> int | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--from/--to: not a date like 2026-12-01: {value!r}") from None
    start = datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(days=after)
    return int(start.timestamp() * 1000) - after


def _changes(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return " | ".join(f"{k}: {_changes(v)}" for k, v in value.items()) or "(none)"
    return "(none)" if value is None else str(value)


@click.command("audit")
@click.option("--org", default=None, help="Only this org's entries (and those about no org).")
@click.option("--from", "first", default=None, help="First day (UTC), e.g. 2026-12-01.")
@click.option("--to", "last", default=None, help="Last day (UTC).")
@click.pass_obj
def audit(obj: Context, org: str | None, first: str | None, last: str | None) -> None:
    """The audit log: overrides, rollbacks, adjustments, policy reloads, token changes."""
    entries = sql.audit_entries(obj.store(), org, _day(first, 0), _day(last, 1))
    if obj.fmt == "json":
        click.echo(render([e.to_dict() for e in entries], "json"))
        return
    rows = [{"at": _at(e.at_ms), "who": e.who, "action": e.action, "scope": e.scope,
             "before": _changes(e.before), "after": _changes(e.after), "why": e.why,
             "version": e.version if e.version is not None else ""} for e in entries]
    if not rows and obj.fmt == "table":
        click.echo("no audit entries")
        return
    click.echo(render(rows, obj.fmt))
