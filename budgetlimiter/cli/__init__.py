"""``budgetlimiter`` command line: a thin click layer over the library.

Settings come from flags, then environment variables (``BUDGETLIMITER_REDIS``,
``BUDGETLIMITER_DB``, ``BUDGETLIMITER_POLICY``), then a config file (``--config FILE``, or
``./budgetlimiter.toml`` when present), then defaults.

Exit codes: 0 success (or allowed), 1 denied by a limit, 2 bad input or invalid policy,
3 Redis or the database unreachable, 4 a commit of a released reservation or a release of a
committed one, 5 a commit or release of an unknown reservation id.
"""

from __future__ import annotations

import logging
import sys

import click

from ..engine.outage import UNAVAILABLE
from ..errors import (
    BudgetLimiterError,
    InvalidInput,
    PolicyError,
    ReservationNotFound,
    ReservationSettled,
)
from .context import (
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_SETTLED,
    EXIT_UNAVAILABLE,
    LOG_HANDLER,
    Context,
    load_config,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis", "redis_url", envvar="BUDGETLIMITER_REDIS", default=None,
              help="Backend URL: redis://, rediss://, unix://, redis+sentinel://, "
              "redis+cluster://, memory:// (default memory://).")
@click.option("--db", "db_url", envvar="BUDGETLIMITER_DB", default=None,
              help="Durable store URL: sqlite:///file.db or postgresql://... (needed by "
              "reconcile, restore, report, alerts and adjust; no default).")
@click.option("--policy", envvar="BUDGETLIMITER_POLICY", default=None,
              help="Policy file (YAML or TOML).")
@click.option("--config", "config_file", envvar="BUDGETLIMITER_CONFIG", default=None,
              type=click.Path(dir_okay=False), help="Config file (TOML) with redis/db/policy.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Output format wherever the output is data.")
@click.option("--strict", is_flag=True, envvar="BUDGETLIMITER_STRICT",
              help="An org (or a team of an org that lists its teams) not declared in the "
              "policy is an error (exit 2), not a warning.")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None, db_url: str | None, policy: str | None,
         config_file: str | None, fmt: str, strict: bool) -> None:
    """Budgets and rate limits for AI agent invocations, on Redis."""
    config = load_config(config_file)
    library = logging.getLogger("budgetlimiter")
    if LOG_HANDLER not in library.handlers:
        library.addHandler(LOG_HANDLER)
    ctx.obj = Context(
        redis_url=redis_url or config.get("redis") or "memory://",
        db_url=db_url or config.get("db") or None,
        policy_path=policy or config.get("policy"),
        fmt=fmt,
        strict=strict,
    )
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from . import durable, live, policy_cmds, settle, top
    from . import forecast as forecast_cmd
    from . import serve as serve_cmd

    main.add_command(live.demo)
    main.add_command(live.check)
    main.add_command(settle.commit)
    main.add_command(settle.release)
    main.add_command(live.record)
    main.add_command(live.status)
    main.add_command(top.top)
    main.add_command(forecast_cmd.forecast)
    main.add_command(live.adjust)
    main.add_command(policy_cmds.policy)
    main.add_command(durable.reconcile)
    main.add_command(durable.report)
    main.add_command(durable.alerts)
    main.add_command(durable.restore)
    main.add_command(serve_cmd.serve)


_register()


def run(argv: list[str] | None = None) -> None:
    """Entry point with the error contract: one clear line, a documented exit code."""
    try:
        main(args=argv, prog_name="budgetlimiter", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors too: one line, not click's three
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_INPUT)
    except (InvalidInput, PolicyError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except ReservationSettled as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_SETTLED)
    except ReservationNotFound as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except UNAVAILABLE as exc:
        text = str(exc).removeprefix("redis unavailable: ")
        click.echo(f"error: Redis unreachable: {text}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except BudgetLimiterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except Exception as exc:  # the database layer raises its own connection errors
        if type(exc).__name__ == "OperationalError":
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"error: database unreachable: {first}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        raise


__all__ = ["Context", "main", "run"]
