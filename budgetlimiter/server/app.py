"""The sidecar's ASGI application (Starlette): :func:`create_app` and its runtime state.

Lifespan: on startup the policy is loaded and an :class:`~budgetlimiter.aio.AsyncBudgetLimiter`
opened (a broken policy stops the startup); ``SIGHUP`` (and, optionally, a change of the policy
file's mtime) reloads the policy atomically; with ``config.reconcile`` the reconciler and
the alert deliverer run on threads of their own (:mod:`.reconcile`); on shutdown in-flight
requests finish (uvicorn waits for them), the reconciler makes a last pass and releases its
leases, then the limiter and the store are closed. Reservations still open at that
moment are refunded by Redis when their TTL expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from ..aio import AsyncBudgetLimiter
from ..engine.engine import Clock
from ..engine.scripts import Registry
from ..policy import Policy, load_policy
from ..subject import Subject
from ..usage import Usage
from .admin import AdminApi
from .config import ServerConfig
from .fastpath import HotPath
from .forecasts import Forecaster
from .handlers import Api, endpoint, hot_route, request_id
from .keeper import admin_hooks
from .metrics import Metrics
from .middleware import Gate
from .models import SubjectIn, UsageIn
from .openapi import build_openapi
from .problems import Problem
from .reconcile import close_service, export, open_service
from .ui import mount_ui

if TYPE_CHECKING:  # the durable side needs the sql extra; loaded only with --db
    from ..durable.service import ReconcileService

log = logging.getLogger("budgetlimiter.server")
MAX_GAUGE_ORGS = 200
#: validated subjects (and usages) kept for reuse; a cache starts over when full
MAX_SUBJECTS = 10_000
#: seconds a stopping sidecar keeps trying to hand its leases back (Redis may be probing)
HAND_BACK_PATIENCE = 5.0


class _AnyText(Convertor[str]):
    """Like ``path`` but also matches newlines (decoded ids may contain anything)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("bl_any", _AnyText())


class Server:
    """Runtime state of one sidecar process."""

    def __init__(self, config: ServerConfig, *, policy: Policy | None = None,
                 limiter: AsyncBudgetLimiter | None = None, clock: Clock | None = None,
                 store: Any = None) -> None:
        self.config = config
        self.metrics = Metrics()
        #: forecasts of this process (one set of in-process readings for every surface)
        self.forecasts = Forecaster(self)
        self.limiter = limiter
        self._policy = policy
        self._clock = clock
        self._store = store
        self._store_lock = threading.Lock()
        self._openapi: dict[str, Any] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._mtime = 0.0
        self._sighup = False
        self._subjects: dict[tuple[str, str, str | None, str | None], Subject] = {}
        self._usages: dict[tuple[int, int, int, str | None], Usage] = {}
        #: entered after start, exited before stop (``serve --grpc-port`` adds the gRPC
        #: service here: same process, event loop, limiter and policy)
        self.lifespan_hooks: list[Callable[[Server], AbstractAsyncContextManager[None]]] = []
        #: the in-process reconciler and alert deliverer (``serve --db``), None when off
        self.reconcile: ReconcileService | None = None
        #: the OpenTelemetry bridge when ``serve --otel`` (or an ``otel_lifespan`` hook) is on
        self.otel: Any = None
        #: entered before ``lifespan_hooks``: the runtime overrides' keeper (server/keeper.py)
        self.builtin_hooks: list[Callable[[Server], AbstractAsyncContextManager[None]]] = []
        #: an override version was stored but Redis did not take it (see server/admin.py)
        self.overrides_unpublished = False
        #: called with (old policy, new policy) after a successful reload (the audit log)
        self.reload_listeners: list[Callable[[Policy, Policy], None]] = []

    # lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the limiter, install the SIGHUP handler and the optional file watch."""
        if self.limiter is None:
            policy = self._policy
            if policy is None:
                if not self.config.policy_path:
                    raise RuntimeError("no policy: set policy_path or pass policy=")
                policy = load_policy(Path(self.config.policy_path))
            self.limiter = AsyncBudgetLimiter(policy, self.config.redis_url,
                                              timeout=self.config.redis_timeout,
                                              clock=self._clock, leases=self.config.lease_config,
                                              pipeline_window=self.config.pipeline_window)
        self.metrics.hot.coalescer = self.limiter.coalescer
        self._mtime = self._policy_mtime()
        loop = asyncio.get_running_loop()
        if self.config.policy_path and hasattr(signal, "SIGHUP"):
            try:
                loop.add_signal_handler(signal.SIGHUP, self.reload_policy)
                self._sighup = True
            except (ValueError, RuntimeError, NotImplementedError):
                log.info("SIGHUP reload unavailable (not the main thread)")
        if self.config.watch_policy > 0 and self.config.policy_path:
            self._watch = asyncio.create_task(self._watch_policy())
        if self.config.reconcile and self.config.db_url:
            self.reconcile = open_service(self.config, self.limiter.policy, self._clock)
            # one set of readings: the reconciler's passes (forecast alerts) read the hard
            # budgets every few seconds, and the sidecar's forecasts use those readings too
            self.reconcile.limiter.samples = self.limiter.samples
        if self.config.gc_freeze:
            # a full collection walks every object the process holds; under load those
            # pauses were the sidecar's p99 (wrk, 64 connections: 44-54 ms, 10-16 ms frozen)
            gc.collect()
            gc.freeze()
        log.info("sidecar started", extra={"redis": _redact(self.config.redis_url),
                                          "auth": self.config.auth_enabled})

    async def stop(self) -> None:
        """Close everything (in-flight requests have finished)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.limiter is not None and self.config.lease_calls:
            # leased usage reaches Redis first, so that the reconciler's last flush has it
            await self._hand_leases_back(self.limiter)
        if self.reconcile is not None:  # its last flush needs Redis: before the limiter
            await close_service(self.reconcile)
        if self.limiter is not None:
            with contextlib.suppress(Exception):
                await self.limiter.aclose()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        log.info("sidecar stopped; open reservations expire by their TTL")

    @staticmethod
    async def _hand_leases_back(limiter: AsyncBudgetLimiter,
                                patience: float = HAND_BACK_PATIENCE) -> None:
        """Hand every lease back before exit; Redis may be between an outage and its circuit's
        probe, so keep trying a few seconds before ``aclose`` reports what stays unsent."""
        deadline = time.monotonic() + patience
        while True:
            try:
                if await limiter.return_leases() == 0:
                    return
            except Exception:  # logged; aclose() says what is lost with the process
                log.exception("handing the leases back at exit failed")
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)

    def require_limiter(self) -> AsyncBudgetLimiter:
        if self.limiter is None:
            raise Problem("backend_unavailable", "the sidecar is starting")
        return self.limiter

    # per-request work done once per subject ---------------------------------------------
    def subject(self, given: SubjectIn) -> Subject:
        """The :class:`Subject` of a validated request subject; the same object for the same
        ids, so the limiter's per-subject templates are found by identity and the ids are
        checked once."""
        key = (given.org, given.agent, given.team, given.user)
        found = self._subjects.get(key)
        if found is None:
            if len(self._subjects) >= MAX_SUBJECTS:
                self._subjects.clear()
            found = self._subjects[key] = given.to_subject()
        return found

    def usage(self, given: UsageIn) -> Usage:
        """The :class:`Usage` of a validated estimate or actual, built once per distinct
        value (agents repeat their estimates; building one validates every field)."""
        key = (given.input_tokens, given.output_tokens, given.invocations, given.cost)
        found = self._usages.get(key)
        if found is None:
            if len(self._usages) >= MAX_SUBJECTS:
                self._usages.clear()
            found = self._usages[key] = given.to_usage()
        return found

    # policy reload -----------------------------------------------------------------------
    def reload_policy(self) -> bool:
        """Load the policy file again and swap it in atomically; on any error log it, keep
        the old policy and return ``False`` (this is the SIGHUP handler)."""
        path = self.config.policy_path
        if not path or self.limiter is None:
            return False
        try:
            new = load_policy(Path(path))
        except Exception as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("policy reload failed; keeping the old policy: %s", exc,
                      extra={"policy": path})
            return False
        old = self.limiter.policy
        self.limiter.set_policy(new)
        if self.reconcile is not None:
            self.reconcile.set_policy(new)
        self._mtime = self._policy_mtime()
        for listener in self.reload_listeners:
            listener(old, new)
        self.metrics.reloads.labels("ok").inc()
        log.info("policy reloaded", extra={"policy": path})
        return True

    def _policy_mtime(self) -> float:
        try:
            return os.stat(self.config.policy_path or "").st_mtime
        except OSError:
            return 0.0

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_policy)
            mtime = self._policy_mtime()
            if mtime and mtime != self._mtime:
                self._mtime = mtime  # a broken file is not retried until it changes again
                self.reload_policy()

    # store, readiness, gauges --------------------------------------------------------------
    async def store(self) -> Any:
        """The durable store, opened (and migrated) on first use in a worker thread."""
        if self._store is None:
            if not self.config.db_url:
                raise Problem("store_unavailable", "no database configured (--db)")
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self._open_store)
        return self._store

    def _open_store(self) -> None:
        with self._store_lock:
            if self._store is None:
                from ..durable.store.sql import Store

                store = Store(self.config.db_url or "")
                try:
                    store.migrate()
                except Exception as exc:
                    store.close()
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise Problem("store_unavailable", first[:200]) from None
                self._store = store

    async def readiness(self) -> tuple[dict[str, bool], str]:
        """Redis answers PING, the scripts are loaded on it, a policy is loaded."""
        checks = {"redis": False, "scripts": False, "policy": False}
        limiter = self.limiter
        if limiter is None:
            return checks, "starting"
        checks["policy"] = limiter.policy is not None
        timeout = self.config.ready_timeout
        try:
            await asyncio.wait_for(limiter.redis.ping(), timeout)
            checks["redis"] = True
            scripts = list(Registry.default().scripts.values())
            found = await asyncio.wait_for(
                limiter.redis.script_exists(*[s.sha for s in scripts]), timeout)
            for script, exists in zip(scripts, found, strict=False):
                if not exists:
                    await asyncio.wait_for(limiter.redis.script_load(script.source), timeout)
            checks["scripts"] = True
        except Exception as exc:
            self.metrics.redis_errors.inc()
            return checks, f"redis: {type(exc).__name__}: {str(exc)[:200]}"
        return checks, ""

    async def refresh_gauges(self) -> None:
        """Best effort: live reservations per declared org, the per-budget gauges (and
        forecasts), and the alert backlog."""
        limiter = self.limiter
        if limiter is not None:
            breaker = getattr(limiter, "breaker", None)
            if breaker is not None:
                self.metrics.circuit_open.set(0 if breaker.state == "closed" else 1)
            orgs = limiter.policy.declared_orgs()[:MAX_GAUGE_ORGS]
            try:
                now = limiter.clock()
                pipe = limiter.redis.pipeline(transaction=False)
                for org in orgs:
                    pipe.zcount(limiter.keys.reservations_by_expiry(org), now, "+inf")
                counts = await asyncio.wait_for(pipe.execute(), self.config.ready_timeout)
                for org, count in zip(orgs, counts, strict=False):
                    self.metrics.outstanding.labels(org).set(int(count))
            except Exception as exc:
                self.metrics.redis_errors.inc()
                log.debug("reservation gauge skipped: %s", exc)
        if limiter is not None:
            cfg = self.config
            try:
                snapshot = await self.forecasts.snapshot(
                    listed=cfg.gauge_scopes, min_percent=cfg.gauge_min_percent,
                    max_budgets=cfg.gauge_max_budgets)
                self.metrics.budgets(snapshot)
            except Exception as exc:
                self.metrics.redis_errors.inc()
                log.debug("budget gauges skipped: %s", exc)
        if self.reconcile is not None:  # no SQL in a scrape: the service's last snapshot
            export(self.metrics, self.reconcile, limiter.clock() if limiter else 0)
        elif self.config.db_url:
            from starlette.concurrency import run_in_threadpool

            try:
                store = await self.store()
                self.metrics.backlog.set(await run_in_threadpool(store.backlog))
            except Exception as exc:
                log.debug("alert backlog gauge skipped: %s", exc)

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                ver = version("budgetlimiter")
            except PackageNotFoundError:  # pragma: no cover - source checkout
                ver = "0"
            self._openapi = build_openapi(ver)
        return self._openapi


def _redact(url: str) -> str:
    """A backend URL without its secrets: the password of the user-info part (also with
    several ``host:port`` as in Sentinel URLs) and any ``*password*`` query parameter."""
    import re

    url = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url, count=1)
    return re.sub(r"((?:^|[?&])[^=&]*password[^=&]*=)[^&]*", r"\1***", url, flags=re.I)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        problem = Problem("method_not_allowed", headers=dict(exc.headers or {}))
    elif exc.status_code == 404:
        problem = Problem("not_found", f"no route for {request.url.path[:200]}")
    else:
        problem = Problem("invalid_input", str(exc.detail)[:200])
    return problem.response(request_id(request))


class SidecarApp(Starlette):
    """Starlette with the :class:`Gate` as the outermost layer of every HTTP request: the
    gate serves the hot POST endpoints itself and hands the rest to the Starlette stack."""

    gate: Gate

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.gate(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _stack(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(config: ServerConfig | None = None, *, policy: Policy | None = None,
               limiter: AsyncBudgetLimiter | None = None, clock: Clock | None = None,
               store: Any = None) -> Starlette:
    """Build the sidecar application. ``policy``, ``limiter``, ``clock`` and ``store`` replace
    what ``config`` would open (for tests and embedding); the app's ``state.server`` is the
    :class:`Server` (``reload_policy()`` is the SIGHUP handler)."""
    cfg = config or ServerConfig()
    server = Server(cfg, policy=policy, limiter=limiter, clock=clock, store=store)
    api = Api(server)
    admin = AdminApi(server)

    def r(path: str, fn: Any, method: str) -> Route:
        return Route(path, endpoint(server, fn), methods=[method])

    hot = api.hot_routes()
    routes = [Route(path, hot_route(server, fn), methods=["POST"]) for path, fn in hot.items()]
    routes += [
        r("/v1/status/{scope:bl_any}", api.status, "GET"),
        r("/v1/forecast/{scope:bl_any}", api.forecast, "GET"),
        r("/v1/usage", api.usage, "GET"),
        r("/v1/policy/effective", api.effective_policy, "GET"),
        Route("/v1/limits/{scope:bl_any}", endpoint(server, admin.limits),
              methods=["GET", "PUT", "DELETE"]),
        r("/v1/policy/versions", admin.versions, "GET"),
        r("/v1/policy/rollback", admin.rollback, "POST"),
        r("/v1/audit", admin.audit, "GET"),
        r("/healthz", api.healthz, "GET"),
        r("/readyz", api.readyz, "GET"),
        r("/metrics", api.metrics, "GET"),
        r("/openapi.json", api.openapi, "GET"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            async with contextlib.AsyncExitStack() as hooks:
                for hook in (*server.builtin_hooks, *server.lifespan_hooks):
                    await hooks.enter_async_context(hook(server))
                yield
        finally:
            await server.stop()

    app = SidecarApp(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error})
    app.gate = Gate(app._stack, tokens=cfg.tokens, metrics=server.metrics,
                    hot=HotPath(server, hot))
    mount_ui(app, server)  # the /ui dashboard shell and GET /v1/ui/tree
    admin_hooks(server)  # restore/republish the overrides; audit reloads and token changes
    app.state.server = server
    if cfg.otel:
        from .otel import otel_lifespan  # the optional otel extra: imported only when asked

        server.lifespan_hooks.append(otel_lifespan())
    return app


def from_environment() -> Starlette:
    """App factory for multi-worker uvicorn (``budgetlimiter serve --workers N``): the
    settings travel in the ``BUDGETLIMITER_SERVE_CONFIG`` environment variable."""
    from .config import load_env_config

    return create_app(load_env_config())
