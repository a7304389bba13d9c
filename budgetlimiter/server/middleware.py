"""The outermost ASGI layer: request ids, bearer-token auth, access logs, HTTP metrics, and
the hot endpoints (served here, without the router)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import PUBLIC_PATHS, allowed, find_token
from .config import Token
from .fastpath import HotPath
from .metrics import Metrics
from .problems import Problem

access_log = logging.getLogger("budgetlimiter.server.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: generated request ids: 32 hex digits, a random per-process half and a counter (uuid4() was
#: a twentieth of the hot path's CPU)
_RID_PREFIX = os.urandom(8).hex()
_RID_SEQ = itertools.count(1)
_ROUTES = frozenset({"/v1/check", "/v1/commit", "/v1/release", "/v1/record", "/v1/check:batch",
                     "/v1/usage", "/v1/policy/effective", "/v1/ui/tree", "/healthz", "/readyz",
                     "/metrics", "/openapi.json", "/v1/policy/versions", "/v1/policy/rollback",
                     "/v1/audit"})
#: routes with a scope in the path: one label each, whatever the scope
_SCOPED = (("/v1/status/", "/v1/status/{scope}"), ("/v1/forecast/", "/v1/forecast/{scope}"),
           ("/v1/limits/", "/v1/limits/{scope}"))


def route_label(path: str) -> str:
    """A low-cardinality label for a path."""
    if path in _ROUTES:
        return path
    for prefix, label in _SCOPED:
        if path.startswith(prefix):
            return label
    return "other"


def _is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class Gate:
    """The one middleware: assigns the request id (``X-Request-Id`` in and out), enforces
    tokens, logs and counts; serves the hot POST endpoints itself (``hot``), everything else
    through the Starlette app. The dashboard shell (``/ui``) passes untouched: it holds no
    data and needs no token.

    The ``Authorization`` header is read here and never stored, logged or forwarded in a
    response.
    """

    def __init__(self, app: ASGIApp, tokens: tuple[Token, ...], metrics: Metrics,
                 hot: HotPath | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics = metrics
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_ui(scope["path"]):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = authorization = None
        for key, value in scope["headers"]:
            if key == b"x-request-id" and given is None:
                given = value
            elif key == b"authorization" and authorization is None:
                authorization = value
        text = given.decode("latin-1") if given is not None else ""
        rid = text if text and _REQUEST_ID.match(text) else f"{_RID_PREFIX}{next(_RID_SEQ):016x}"
        scope.setdefault("state", {})["request_id"] = rid
        status = [500]

        def send_with_id() -> Send:
            """``send`` that records the status and adds the request id (the hot path
            writes its own headers and needs none: built only for the other routes)."""
            async def wrapped(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    MutableHeaders(scope=message)["X-Request-Id"] = rid
                await send(message)
            return wrapped

        method: str = scope["method"]
        path: str = scope["path"]
        token_name = ""
        try:
            if self.tokens and path not in PUBLIC_PATHS:
                token = find_token(self.tokens, None if authorization is None
                                   else authorization.decode("latin-1"))
                problem: Problem | None = None
                if token is None:
                    problem = Problem("unauthorized", "send Authorization: Bearer <token>",
                                      headers={"WWW-Authenticate": 'Bearer realm="budgetlimiter"'})
                elif not allowed(token, method):
                    problem = Problem("forbidden", f"token {token.name!r} is read-only")
                if problem is not None:
                    await problem.response(rid)(scope, receive, send_with_id())
                    return
                assert token is not None
                token_name = token.name
                # for the handlers' org and admin checks (auth.py)
                scope.setdefault("state", {})["token"] = token
            handler = self.hot.routes.get(path) if self.hot is not None and \
                method == "POST" else None
            if handler is not None:
                assert self.hot is not None
                status[0] = await self.hot.serve(handler, scope, receive, send, rid)
            else:
                await self.app(scope, receive, send_with_id())
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.http(route_label(path), method, status[0], elapsed)
            if access_log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {
                    "request_id": rid, "method": method, "path": path[:512],
                    "status": status[0], "duration_ms": round(elapsed * 1000, 3),
                }
                if token_name:
                    extra["token"] = token_name
                access_log.info("request", extra=extra)
