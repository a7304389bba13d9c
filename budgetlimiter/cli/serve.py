"""``budgetlimiter serve``: the HTTP sidecar on uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import importlib.util
import os

import click

from .context import Context, check_redis_url, open_store
from .durable import webhook_options

#: the sidecar's pipeline window (seconds) when it serves gRPC: while it is near saturation, a
#: decision waits at most this long for others to share its Redis write (README, "Pipeline
#: window")
SERVE_PIPELINE_WINDOW = 0.004


def _fast(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


@click.command()
@click.option("--host", envvar="BUDGETLIMITER_HOST", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires --token.")
@click.option("--port", envvar="BUDGETLIMITER_PORT", type=int, default=8787, show_default=True)
@click.option("--workers", envvar="BUDGETLIMITER_WORKERS", type=int, default=1,
              show_default=True, help="Worker processes (metrics are per worker).")
@click.option("--token", "tokens", multiple=True,
              help="name:secret:scope (scope read or write); repeatable. Also "
              "BUDGETLIMITER_TOKENS=name:secret:scope,...")
@click.option("--max-body", type=int, default=64 * 1024, show_default=True,
              help="Largest accepted request body in bytes (larger: 413).")
@click.option("--redis-timeout", type=float, default=0.25, show_default=True,
              help="Socket timeout of every Redis call, seconds.")
@click.option("--watch-policy", type=float, default=0.0, show_default=True,
              help="Also reload the policy when its file changes (poll every N s; 0 = off).")
@click.option("--grpc-port", envvar="BUDGETLIMITER_GRPC_PORT", type=int, default=None,
              help="Also serve Envoy's rate limit service (gRPC) on this port, same host, "
              "limiter and policy (needs the envoy extra and --workers 1).")
@click.option("--leases", envvar="BUDGETLIMITER_LEASES", default=None, metavar="CALLS[,SECONDS]",
              help="Admit checks from in-process slices of CALLS estimates, kept SECONDS "
              "(default 1); SIGTERM hands them back. Off by default (see README, Leases).")
@click.option("--pipeline-window", envvar="BUDGETLIMITER_PIPELINE_WINDOW", type=float,
              default=None, metavar="MS",
              help="While the sidecar is near saturation, a Redis call waits up to MS "
              "milliseconds for others to share its write (default "
              f"{SERVE_PIPELINE_WINDOW * 1000:g} with --grpc-port, whose calls arrive one at a "
              "time; else 0: HTTP requests arrive in bursts that share writes already).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--no-reconcile", is_flag=True,
              help="With --db: do not run the reconciler and alert deliverer in this process.")
@click.option("--reconcile-interval", type=float, default=2.0, show_default=True,
              help="With --db: seconds between reconcile passes (the most usage Redis can lose).")
@click.option("--reconcile-lease", type=float, default=6.0, show_default=True,
              help="With --db: seconds an org's reconcile lease lasts; another sidecar takes "
              "an org over this long after its holder dies (0: no leases).")
@webhook_options
@click.option("--gauge-scope", "gauge_scopes", multiple=True,
              help="A scope whose budgets always get gauges in /metrics (repeatable; other "
              "scopes get them when blocked, forecast to exceed or over --gauge-percent).")
@click.option("--gauge-percent", type=click.FloatRange(min=0), default=50.0,
              show_default=True, help="Budgets used at least this much get gauges.")
@click.option("--gauge-max", type=click.IntRange(min=0), default=200, show_default=True,
              help="At most this many budgets get gauges (bounded label cardinality).")
@click.option("--otel", is_flag=True, envvar="BUDGETLIMITER_OTEL",
              help="Also export the metrics through OpenTelemetry over OTLP/HTTP (the otel "
              "extra; OTEL_EXPORTER_OTLP_* variables configure it).")
@click.pass_obj
def serve(obj: Context, host: str, port: int, workers: int, tokens: tuple[str, ...],
          max_body: int, redis_timeout: float, watch_policy: float, grpc_port: int | None,
          log_level: str, no_reconcile: bool, reconcile_interval: float,
          reconcile_lease: float, webhooks: tuple[str, ...], webhook_secret_env: str,
          gauge_scopes: tuple[str, ...], gauge_percent: float, gauge_max: int,
          otel: bool, leases: str | None, pipeline_window: float | None) -> None:
    """Run the HTTP sidecar (JSON API, /metrics, /healthz, /readyz; SIGHUP reloads the policy).

    Redis, database and policy come from the global --redis/--db/--policy options
    (BUDGETLIMITER_REDIS, _DB, _POLICY). With --db the sidecar also reconciles usage to SQL
    and delivers alerts (one sidecar per org at a time, by a lease in Redis).
    """
    import uvicorn

    from ..policy import load_policy
    from ..server import ConfigError, ServerConfig, create_app, parse_tokens
    from ..server.config import ENV_CONFIG, dump_env_config, parse_leases
    from ..server.logs import setup_logging

    try:
        lease_calls, lease_seconds = parse_leases(leases) if leases else (0, 1.0)
        config = ServerConfig(
            redis_url=obj.redis_url, db_url=obj.db_url, policy_path=obj.policy_path,
            host=host, port=port, workers=workers,
            tokens=parse_tokens(tokens, os.environ.get("BUDGETLIMITER_TOKENS")),
            max_body=max_body, redis_timeout=redis_timeout, watch_policy=watch_policy,
            log_level=log_level, reconcile=bool(obj.db_url) and not no_reconcile,
            reconcile_interval=reconcile_interval, reconcile_lease=reconcile_lease,
            webhooks=webhooks, webhook_secret_env=webhook_secret_env,
            gauge_scopes=gauge_scopes, gauge_min_percent=gauge_percent,
            gauge_max_budgets=gauge_max, otel=otel,
            lease_calls=lease_calls, lease_seconds=lease_seconds, gc_freeze=True,
            pipeline_window=(pipeline_window / 1000 if pipeline_window is not None
                             else SERVE_PIPELINE_WINDOW if grpc_port is not None else 0.0),
        ).validate()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.policy_path:
        raise click.UsageError("no policy: pass --policy FILE or set BUDGETLIMITER_POLICY")
    if grpc_port is not None and (workers > 1 or not 0 <= grpc_port <= 65535):
        raise click.UsageError("--grpc-port needs --workers 1 and a port in 0..65535")
    # bad URLs: one line and exit 2 now, not a traceback in the log at startup (neither
    # connects: the sidecar starts while Redis or the database is down)
    check_redis_url(obj.redis_url)
    if obj.db_url:
        open_store(obj.db_url).close()
    from pathlib import Path

    load_policy(Path(config.policy_path))  # fail fast (exit 2) on a broken policy
    setup_logging(log_level)
    import prometheus_client

    # no *_created series: they double the scrape size and nobody graphs them
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    options = {
        "host": host, "port": port, "log_config": None, "access_log": False,
        "loop": _fast("uvloop", "uvloop", "asyncio"),
        "http": _fast("httptools", "httptools", "h11"),
        "timeout_graceful_shutdown": 30, "server_header": False, "ws": "none",
    }
    if workers > 1:
        os.environ[ENV_CONFIG] = dump_env_config(config)
        uvicorn.run("budgetlimiter.server.app:from_environment", factory=True,
                    workers=workers, **options)  # type: ignore[arg-type]
    else:
        app = create_app(config)
        if grpc_port is not None:
            from ..envoy import sidecar_hook

            app.state.server.lifespan_hooks.append(sidecar_hook(host, grpc_port, config.tokens))
        uvicorn.run(app, **options)  # type: ignore[arg-type]


__all__ = ["serve"]
