"""The read-only web dashboard: ``/ui`` (static page and assets) and ``GET /v1/ui/tree``.

The page and its assets hold no data and are served without a token (by :class:`UiShell`,
which sits outside the auth gate); every number on the page comes from JSON endpoints behind
the gate, so with tokens configured the page needs a read token (``/ui?token=...`` once; the
script keeps it in ``sessionStorage`` and sends ``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..subject import Scope as BudgetScope
from .forecasts import limit_forecast
from .handlers import endpoint, json_response
from .params import TREE_PARAMS, read_query
from .problems import Problem

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .app import Server

MAX_SCOPES = 500
MAX_ALERTS = 50
TOP = 10
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard-format.js": "text/javascript; charset=utf-8",
           "dashboard-charts.js": "text/javascript; charset=utf-8",
           "dashboard-tree.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}
_DIGITS = re.compile(r"(\d+)")
_PAGE = re.compile(r"^/ui(?:/|/org/[^/]+/?)?$")
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _asset(name: str) -> bytes:
    return files("budgetlimiter.server").joinpath("static").joinpath(name).read_bytes()


class UiShell:
    """Serves ``/ui``, ``/ui/org/{org}`` and ``/ui/static/*`` (GET/HEAD); passes the rest on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cache: dict[str, bytes] = {}

    def _read(self, name: str) -> bytes:
        if name not in self._cache:
            self._cache[name] = _asset(name)
        return self._cache[name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return
        headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
        if scope["method"] not in ("GET", "HEAD"):
            response = Response("method not allowed\n", 405, headers={**headers,
                                "Allow": "GET, HEAD"}, media_type="text/plain")
        elif _PAGE.match(path):
            response = Response(self._read("dashboard.html"), headers={
                **headers, "Cache-Control": "no-store"}, media_type="text/html; charset=utf-8")
        elif path.startswith("/ui/static/") and path[len("/ui/static/"):] in _ASSETS:
            name = path[len("/ui/static/"):]
            response = Response(self._read(name), headers={
                **headers, "Cache-Control": "no-cache"}, media_type=_ASSETS[name])
        else:
            response = Response("not found\n", 404, headers=headers, media_type="text/plain")
        await response(scope, receive, send)


def _parent(scope: BudgetScope) -> BudgetScope | None:
    if scope.agent is not None:
        return BudgetScope(scope.org, scope.team, scope.user, None)
    if scope.user is not None:
        return BudgetScope(scope.org, scope.team, None, None)
    if scope.team is not None:
        return BudgetScope(scope.org)
    return None


async def org_scopes(server: Server, org: str) -> list[BudgetScope]:
    """Scopes of ``org`` with counters in Redis or declared in the policy (and their
    ancestors), like ``budgetlimiter status --tree``."""
    limiter = server.require_limiter()
    found = set(await limiter.live_scopes(org, limit=MAX_SCOPES))
    found.add(BudgetScope(org))
    for sc in list(found):
        p = _parent(sc)
        while p is not None:
            found.add(p)
            p = _parent(p)
    ordered = sorted(found, key=lambda s: (_natural(s.team), _natural(s.user),
                                           s.agent is not None, _natural(s.agent)))
    return ordered[:MAX_SCOPES]


def _natural(name: str | None) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts u2 before u10 (digit runs compare as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.casefold())
                 for part in _DIGITS.split(name or "") if part)


async def _alerts(server: Server, org: str) -> list[dict[str, Any]]:
    from starlette.concurrency import run_in_threadpool

    store = await server.store()
    rows = await run_in_threadpool(store.deliveries, None, 500)
    out: list[dict[str, Any]] = []
    for d in rows:
        ev = d.event
        if ev.org != org:
            continue
        out.append({"id": ev.id, "scope": ev.scope, "metric": ev.metric, "period": ev.period,
                    "period_id": ev.period_id, "threshold": ev.threshold,
                    "occurred_ms": ev.occurred_ms, "sink": d.sink, "state": d.state,
                    "attempts": d.attempts, "last_error": d.last_error[:200]})
        if len(out) >= MAX_ALERTS:
            break
    return out


async def tree(request: Request) -> Response:
    """``GET /v1/ui/tree?org=``: every scope of the org with its live counters, the top
    consumers, the org's timezone (IANA name) and (with a database) the alert log with
    delivery states."""
    server: Server = request.app.state.server
    org = read_query(TREE_PARAMS, request.query_params)["org"]
    scopes = await org_scopes(server, org)
    results = await asyncio.gather(*(server.forecasts.scope(s) for s in scopes))
    nodes: list[dict[str, Any]] = []
    top: list[dict[str, Any]] = []
    for sc, result in zip(scopes, results, strict=True):
        docs = [{**s.to_dict(), "forecast": limit_forecast(f)}
                for s, f in zip(result.limits, result.forecasts, strict=True)]
        parent = _parent(sc)
        nodes.append({"scope": str(sc), "level": sc.level, "team": sc.team, "user": sc.user,
                      "agent": sc.agent, "parent": str(parent) if parent else None,
                      "limits": docs})
        # consumers: limits with something used or reserved (idle budgets would fill the list)
        top.extend(d for d in docs if Decimal(str(d["taken"])) > 0)
    top.sort(key=lambda d: (-float(d["percent"]), _natural(d["scope"])))
    doc: dict[str, Any] = {"org": org, "generated_at": time.time(),
                           "store": bool(server.config.db_url) or server._store is not None,
                           "scopes": nodes, "top": top[:TOP], "alerts": None,
                           "alerts_error": None}
    # the page shows every time (resets, alerts, trend days, "updated") in the org's zone,
    # the zone its periods are calendar-aligned in, not the browser's
    doc["timezone"] = server.require_limiter().policy.timezone_for(org).key
    if doc["store"]:
        try:
            doc["alerts"] = await _alerts(server, org)
        except Problem as exc:
            doc["alerts_error"] = exc.detail
        except Exception as exc:  # a broken database must not break the live view
            doc["alerts_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return json_response(doc)


def mount_ui(app: Starlette, server: Server) -> None:
    """Add ``GET /v1/ui/tree`` (behind the auth gate) and the ``/ui`` shell (outside it).
    Call after the gate middleware is added so the shell is the outermost layer."""
    app.router.routes.append(Route("/v1/ui/tree", endpoint(server, tree), methods=["GET"]))
    app.add_middleware(UiShell)
