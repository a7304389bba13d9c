"""``budgetlimiter`` command line: a thin click layer over the library.

Exit codes: 0 success (or allowed), 1 denied by a limit, 2 bad input or invalid policy,
3 Redis unreachable.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from .errors import BudgetLimiterError, InvalidInput, PolicyError
from .subject import Subject
from .usage import Usage

EXIT_DENIED = 1
EXIT_INPUT = 2
EXIT_UNAVAILABLE = 3


class Context:
    def __init__(self, redis_url: str, policy: str | None, fmt: str) -> None:
        self.redis_url = redis_url
        self.policy_path = policy
        self.fmt = fmt

    def policy(self) -> Any:
        from .policy import load_policy

        if not self.policy_path:
            raise click.UsageError("no policy: pass --policy FILE or set BUDGETLIMITER_POLICY")
        return load_policy(Path(self.policy_path))

    def limiter(self) -> Any:
        from .client import BudgetLimiter

        return BudgetLimiter(self.policy(), self.redis_url, timeout=2.0)


def emit(ctx: Context, rows: list[dict[str, Any]], text: str | None = None) -> None:
    """Print data rows as table (or the given text), json or csv."""
    if ctx.fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    elif ctx.fmt == "csv":
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
    else:
        click.echo(text if text is not None else table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def subject_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--org", required=True, help="Organisation id."),
        click.option("--team", default=None, help="Team id."),
        click.option("--user", default=None, help="User id."),
        click.option("--agent", required=True, help="Agent / model id."),
    ]):
        fn = opt(fn)
    return fn


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
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                 invocations=invocations, cost=Decimal(cost) if cost is not None else None)


def limit_rows(limits: Iterable[Any]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in limits]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix":
                               "BUDGETLIMITER"})
@click.option("--redis", "redis_url", envvar="BUDGETLIMITER_REDIS", default="memory://",
              show_default=True, help="Backend URL (redis://, rediss://, unix://, "
              "redis+sentinel://, redis+cluster://, memory://).")
@click.option("--policy", envvar="BUDGETLIMITER_POLICY", default=None,
              help="Policy file (YAML or TOML).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.pass_context
def main(ctx: click.Context, redis_url: str, policy: str | None, fmt: str) -> None:
    """Budgets and rate limits for AI agent invocations, on Redis."""
    ctx.obj = Context(redis_url, policy, fmt)


@main.command()
@click.option("--invocations", type=int, default=400, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(invocations: int, seed: int) -> None:
    """Simulate a burst of agent calls on the embedded backend and report the outcome."""
    from .demo import demo_policy_path, format_report, run_demo

    click.echo(f"budgetlimiter demo: policy {demo_policy_path()}, backend memory:// "
               "(in-process, same Lua scripts as Redis)\n")
    click.echo(format_report(run_demo(invocations, seed)))


@main.group()
def policy() -> None:
    """Validate policy files and show effective limits."""


@policy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_validate(file: str) -> None:
    """Check a policy file; errors name file, line, path and field (exit code 2)."""
    from .policy import load_policy

    try:
        pol = load_policy(Path(file))
    except PolicyError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_INPUT)
    except OSError as exc:
        click.echo(f"{file}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(f"{file}: valid ({len(pol.orgs)} orgs, {len(pol.pricing)} priced agents)")


@policy.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@subject_options
@click.pass_obj
def policy_show(obj: Context, file: str | None, org: str, team: str | None, user: str | None,
                agent: str) -> None:
    """The effective (inherited) limits of one subject."""
    if file:
        obj.policy_path = file
    eff = obj.policy().resolve(Subject(org, agent, team=team, user=user))
    data = eff.to_dict()
    if obj.fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = []
    for sc in data["scopes"]:
        for lim in sc.get("limits", []):
            rows.append({"scope": sc["scope"], "kind": "budget", **{
                k: lim.get(k) for k in ("metric", "amount", "period", "mode", "rollover")},
                "from": lim.get("origin", "")})
        for rate in sc.get("rates", []):
            rows.append({"scope": sc["scope"], "kind": "rate", "metric": rate.get("metric"),
                         "amount": rate.get("limit"), "period": f"per {rate.get('per')}",
                         "mode": "hard", "rollover": "", "from": rate.get("origin", "")})
    emit(obj, rows)


@main.command()
@subject_options
@usage_options
@click.option("--ttl", type=float, default=None, help="Reservation TTL in seconds.")
@click.pass_obj
def check(obj: Context, org: str, team: str | None, user: str | None, agent: str,
          input_tokens: int, output_tokens: int, invocations: int, cost: str | None,
          ttl: float | None) -> None:
    """Check and reserve an estimate (exit 1 when denied)."""
    subject = Subject(org, agent, team=team, user=user)
    est = make_usage(input_tokens, output_tokens, invocations, cost)
    with obj.limiter() as bl:
        decision = bl.check(subject, est, ttl=ttl)
    if obj.fmt == "json":
        click.echo(json.dumps(decision.to_dict(), indent=2, default=str))
    else:
        click.echo(str(decision))
        if decision.reservation:
            click.echo(f"reservation {decision.reservation.id} "
                       f"(expires {decision.reservation.expires_at:%Y-%m-%d %H:%M:%S}Z)")
        emit(obj, limit_rows(decision.limits)) if obj.fmt == "csv" else click.echo(
            table(limit_rows(decision.limits)))
    if not decision.allowed:
        sys.exit(EXIT_DENIED)


@main.command()
@subject_options
@usage_options
@click.option("--request-id", default=None, help="Idempotency key.")
@click.pass_obj
def record(obj: Context, org: str, team: str | None, user: str | None, agent: str,
           input_tokens: int, output_tokens: int, invocations: int, cost: str | None,
           request_id: str | None) -> None:
    """Record usage that had no reservation (idempotent by --request-id)."""
    subject = Subject(org, agent, team=team, user=user)
    with obj.limiter() as bl:
        result = bl.record(subject, make_usage(input_tokens, output_tokens, invocations, cost),
                           request_id=request_id)
    if obj.fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        click.echo(f"{result.status} {result.id} cost ${result.cost_usd}")
        for t in result.thresholds:
            click.echo(f"threshold {t.threshold}% crossed: {t.metric.value} per {t.period} "
                       f"of {t.scope}")


@main.command()
@subject_options
@click.pass_obj
def status(obj: Context, org: str, team: str | None, user: str | None, agent: str) -> None:
    """Live counters of every limit that applies to one subject."""
    subject = Subject(org, agent, team=team, user=user)
    with obj.limiter() as bl:
        emit(obj, limit_rows(bl.status(subject)))


def run() -> None:
    """Entry point with the error contract: one clear line, documented exit code."""
    from .shell import UNAVAILABLE

    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INPUT)
    except (InvalidInput, PolicyError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except UNAVAILABLE as exc:
        click.echo(f"error: Redis unreachable: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except BudgetLimiterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
