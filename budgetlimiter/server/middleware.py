"""The outermost ASGI layer: request ids, bearer-token auth, access logs and HTTP metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import PUBLIC_PATHS, allowed, find_token
from .config import Token
from .metrics import Metrics
from .problems import Problem

access_log = logging.getLogger("budgetlimiter.server.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_ROUTES = frozenset({"/v1/check", "/v1/commit", "/v1/release", "/v1/record", "/v1/check:batch",
                     "/v1/usage", "/v1/policy/effective", "/v1/ui/tree", "/healthz", "/readyz",
                     "/metrics", "/openapi.json"})


def route_label(path: str) -> str:
    """A low-cardinality label for a path."""
    if path in _ROUTES:
        return path
    if path.startswith("/v1/status/"):
        return "/v1/status/{scope}"
    return "other"


class Gate:
    """Assigns the request id (``X-Request-Id`` in and out), enforces tokens, logs and counts.

    The ``Authorization`` header is read here and never stored, logged or forwarded in a
    response.
    """

    def __init__(self, app: ASGIApp, tokens: tuple[Token, ...], metrics: Metrics) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        method: str = scope["method"]
        path: str = scope["path"]
        token_name = ""
        try:
            if self.tokens and path not in PUBLIC_PATHS:
                token = find_token(self.tokens, headers.get("authorization"))
                problem: Problem | None = None
                if token is None:
                    problem = Problem("unauthorized", "send Authorization: Bearer <token>",
                                      headers={"WWW-Authenticate": 'Bearer realm="budgetlimiter"'})
                elif not allowed(token, method):
                    problem = Problem("forbidden", f"token {token.name!r} is read-only")
                if problem is not None:
                    await problem.response(rid)(scope, receive, send_with_id)
                    return
                assert token is not None
                token_name = token.name
                scope["state"]["token"] = token  # for the handlers' org/admin checks (auth.py)
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            label = route_label(path)
            self.metrics.latency.labels(label, method).observe(elapsed)
            self.metrics.requests.labels(label, method, str(status[0])).inc()
            if access_log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {
                    "request_id": rid, "method": method, "path": path[:512],
                    "status": status[0], "duration_ms": round(elapsed * 1000, 3),
                }
                if token_name:
                    extra["token"] = token_name
                access_log.info("request", extra=extra)
