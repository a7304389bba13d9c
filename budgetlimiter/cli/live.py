"""Commands on live Redis counters: demo, check, record, status, adjust."""

from __future__ import annotations

import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from ..errors import InvalidAmount
from ..subject import Scope, Subject
from ..usage import Metric, Usage, micros_to_usd, usd_to_micros
from .context import EXIT_DENIED, EXIT_INPUT, EXIT_UNAVAILABLE, Context, redacted
from .forecast import exhausts, scope_forecast
from .output import limit_row, render
from .policy_cmds import subject_options


def usage_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--input-tokens", type=int, default=0, show_default=True),
        click.option("--output-tokens", type=int, default=0, show_default=True),
        click.option("--invocations", type=int, default=1, show_default=True),
        click.option("--cost", default=None, help="USD; default: computed from pricing."),
    ]):
        fn = opt(fn)
    return fn


def make_usage(input_tokens: int, output_tokens: int, invocations: int,
               cost: str | None) -> Usage:
    try:
        dec = Decimal(cost) if cost is not None else None
    except InvalidOperation:
        raise InvalidAmount(f"--cost is not a decimal number: {cost!r}") from None
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                 invocations=invocations, cost=dec)


@click.command()
@click.option("--invocations", type=int, default=400, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(invocations: int, seed: int) -> None:
    """Simulate a burst of agent calls on the embedded backend and report the outcome."""
    from ..demo import demo_policy_path, format_report, run_demo

    click.echo(f"budgetlimiter demo: policy {demo_policy_path()}, backend memory:// "
               "(in-process, same Lua scripts as Redis)\n")
    click.echo(format_report(run_demo(invocations, seed)))


@click.command()
@subject_options
@usage_options
@click.option("--reserve", is_flag=True,
              help="Hold the estimate: reserve it and print the reservation id, to settle "
              "with `commit ID` or `release ID` (default: answer only, nothing reserved).")
@click.option("--ttl", type=float, default=None,
              help="With --reserve: the reservation's TTL in seconds.")
@click.pass_obj
def check(obj: Context, org: str, team: str | None, user: str | None, agent: str,
          input_tokens: int, output_tokens: int, invocations: int, cost: str | None,
          reserve: bool, ttl: float | None) -> None:
    """Would this estimate fit? Exit 1 when denied. Nothing is reserved unless --reserve."""
    if ttl is not None and not reserve:
        raise click.UsageError("--ttl needs --reserve (without it nothing is reserved)")
    subject = Subject(org, agent, team=team, user=user)
    est = make_usage(input_tokens, output_tokens, invocations, cost)
    obj.declared(org, team)
    decision = obj.limiter().check(subject, est, ttl=ttl, dry_run=not reserve)
    if decision.degraded:
        # the policy's outage setting answered, not Redis: no decision to report, nothing held
        click.echo(f"error: Redis unreachable: nothing was checked or reserved "
                   f"({redacted(obj.redis_url)})", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    res = decision.reservation
    if obj.fmt == "json":
        click.echo(json.dumps(decision.to_dict(), indent=2, default=str))
    elif obj.fmt == "csv":
        head = {"allowed": decision.allowed, "reservation_id": res.id if res else "",
                "expires_at": res.expires_at.isoformat() if res else ""}
        rows = [{**head, **limit_row(s, False)} for s in decision.limits]
        click.echo(render(rows or [head], "csv"))
    else:
        click.echo(str(decision))
        if res is not None:
            click.echo(f"reservation {res.id} (expires {res.expires_at:%Y-%m-%d %H:%M:%S}Z)")
        elif decision.allowed:
            click.echo("nothing reserved (--reserve holds the estimate)")
        click.echo(render([limit_row(s) for s in decision.limits], "table"))
    if not decision.allowed:
        sys.exit(EXIT_DENIED)


@click.command()
@subject_options
@usage_options
@click.option("--request-id", default=None, help="Idempotency key.")
@click.pass_obj
def record(obj: Context, org: str, team: str | None, user: str | None, agent: str,
           input_tokens: int, output_tokens: int, invocations: int, cost: str | None,
           request_id: str | None) -> None:
    """Record usage that had no reservation (idempotent by --request-id)."""
    subject = Subject(org, agent, team=team, user=user)
    usage = make_usage(input_tokens, output_tokens, invocations, cost)
    obj.declared(org, team)
    limiter = obj.limiter()
    result = limiter.record(subject, usage, request_id=request_id)
    # a duplicate carries no amounts: show the cost of what was asked (the same request id
    # was recorded before, with whatever usage it had then; nothing is counted again)
    asked = (usage.cost if usage.cost is not None
             else micros_to_usd(obj.policy().pricing_for(agent).cost_micros(usage)))
    settle_output(obj, result, asked, "already recorded: nothing counted again")


def settle_output(obj: Context, result: Any, asked: Decimal | None, duplicate: str) -> None:
    """One settle result (record, commit, release) in the chosen format."""
    out = result.to_dict()
    if out["cost"] is None and asked is not None:
        out["cost"] = str(asked)
    thresholds = out.pop("thresholds")
    if obj.fmt == "json":
        click.echo(json.dumps({**out, "thresholds": thresholds}, indent=2, default=str))
        return
    if obj.fmt == "csv":
        click.echo(render([{**out, "thresholds": " ".join(
            f"{t['scope']}:{t['metric']}:{t['period']}:{t['threshold']}" for t in thresholds)}],
            "csv"))
        return
    line = f"{result.status} {result.id}"
    if out["cost"] is not None:
        line += f" cost ${out['cost']}"
    if result.status == "duplicate":
        line += f" ({duplicate})"
    if result.overshoot and result.status in ("committed", "late"):
        line += " (overshoot: more than the estimate)"
    click.echo(line)
    for t in result.thresholds:
        click.echo(f"threshold {t.threshold}% crossed: {t.metric.value} per {t.period} "
                   f"of {t.scope}")


def live_scopes(limiter: Any, prefix: Scope | None) -> list[Scope]:
    """Scopes with counters in Redis (any org when ``prefix`` is None) or declared in the
    policy, under ``prefix``."""
    found = set(limiter.live_scopes(prefix.org if prefix is not None else None))
    if prefix is not None:
        found = {s for s in found if is_under(s, prefix)}
    return sorted(found, key=lambda s: (s.org, s.team or "", s.user or "", s.agent or ""))


def _pairs(result: Any) -> list[tuple[Any, Any]]:
    return list(zip(result.limits, result.forecasts, strict=True))


def is_under(scope: Scope, parent: Scope) -> bool:
    if scope.org != parent.org:
        return False
    for level in ("team", "user", "agent"):
        want = getattr(parent, level)
        if want is not None and getattr(scope, level) != want:
            return False
    return True


@click.command()
@click.argument("scope")
@click.option("--tree", is_flag=True, help="Also every descendant scope with counters.")
@click.pass_obj
def status(obj: Context, scope: str, tree: bool) -> None:
    """Live counters of SCOPE (e.g. org:acme/team:eng): used / reserved / limit / remaining
    / percent / resets-at per metric and period."""
    target = Scope.parse(scope)
    obj.declared(target.org, target.team)
    limiter = obj.limiter()
    scopes = live_scopes(limiter, target) if tree else [target]
    if target not in scopes:
        scopes.insert(0, target)
    rows = [limit_row(s, obj.fmt == "table", exhausts(f)) for sc in scopes
            for s, f in _pairs(scope_forecast(obj, limiter, sc))]
    if not rows and obj.fmt == "table":
        click.echo(f"{target}: no limits apply to this scope")
        return
    click.echo(render(rows, obj.fmt))


@click.command()
@click.argument("scope")
@click.option("--metric", type=click.Choice([m.value for m in Metric]), required=True)
@click.option("--amount", required=True,
              help="Positive = debit (adds usage), negative = credit; USD for cost.")
@click.option("--why", required=True, help="Reason, kept in the audit trail.")
@click.option("--who", default=None, help="Operator (default: $USER).")
@click.option("--id", "adjustment_id", default=None,
              help="Adjustment id (default: generated); retrying with the same id never "
              "applies it twice.")
@click.pass_obj
def adjust(obj: Context, scope: str, metric: str, amount: str, why: str,
           who: str | None, adjustment_id: str | None) -> None:
    """An audited credit or debit of SCOPE's current-period usage, applied to SCOPE and the
    scopes above it that have a limit on the metric (a credit stops at zero usage)."""
    import getpass

    from ..durable.adjust import apply_adjustment
    from ..errors import AdjustmentIncomplete

    target = Scope.parse(scope)
    met = Metric(metric)
    try:
        dec = Decimal(amount)
    except InvalidOperation:
        raise InvalidAmount(f"--amount is not a number: {amount!r}") from None
    if not dec.is_finite():
        raise InvalidAmount(f"--amount must be finite: {amount!r}")
    sign = -1 if dec < 0 else 1
    units = (usd_to_micros("--amount", abs(dec)) if met is Metric.COST else int(abs(dec)))
    if met is not Metric.COST and abs(dec) != int(abs(dec)):
        raise InvalidAmount(f"--amount must be a whole number for {metric}")
    if not why.strip():
        click.echo("error: --why must not be empty", err=True)
        sys.exit(EXIT_INPUT)
    obj.declared(target.org, target.team)
    limiter = obj.limiter()
    # Redis first: with it down the command exits 3 before opening (and creating) the store
    limiter.redis.ping()
    try:
        outcome = apply_adjustment(limiter, obj.store(), target, met, sign * units,
                                   who or getpass.getuser(), why,
                                   adjustment_id=adjustment_id)
    except AdjustmentIncomplete as exc:
        click.echo(f"error: {exc} (--id {exc.adjustment_id})", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    adj = outcome.adjustment

    def show(units: int) -> str:
        return str(micros_to_usd(units)) if met is Metric.COST else str(units)

    out = {"id": adj.id, "status": outcome.status, "scope": adj.scope, "metric": adj.metric,
           "requested": show(adj.requested if adj.requested is not None else adj.amount),
           "applied": show(adj.amount), "day": adj.day, "who": adj.who, "why": adj.why}
    click.echo(render([out], obj.fmt))
