"""The HTTP endpoints: each parses strictly, calls the library, and answers JSON or a problem."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..engine.outage import UNAVAILABLE
from ..errors import BudgetLimiterError
from ..results import Decision
from ..subject import Scope, Subject
from . import models as m
from .params import CHECK_PARAMS, EFFECTIVE_PARAMS, read_query, scope_error
from .problems import Problem, dumps, from_library_error

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
_WINDOW = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000,
           "per second": 1, "per minute": 60, "per hour": 3600}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(dumps(data), status_code=status, headers=headers,
                    media_type="application/json")


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def endpoint(server: Server, fn: Handler) -> Handler:
    """Turn every failure of ``fn`` into a problem response (and count Redis errors)."""

    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except Problem as problem:
            return problem.response(request_id(request))
        except UNAVAILABLE as exc:
            server.metrics.redis_errors.inc()
            log.warning("redis unavailable: %s", exc, extra={"request_id": request_id(request)})
            return Problem("backend_unavailable", "Redis did not answer in time",
                           headers={"Retry-After": "1"}).response(request_id(request))
        except BudgetLimiterError as exc:
            return from_library_error(exc).response(request_id(request))
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id(request)})
            return Problem("internal_error", "unexpected error; see the server log"
                           ).response(request_id(request))

    return wrapped


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    too_large = Problem("payload_too_large", f"the request body limit is {limit} bytes")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_model(request: Request, model: type[M], limit: int) -> M:
    """Parse and validate a JSON body (NaN and Infinity are not JSON and are refused)."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise Problem("invalid_json", f"the body is not valid JSON: {str(exc)[:200]}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors(include_url=False, include_input=False)[:20]]
        first = errors[0] if errors else {"loc": [], "msg": "invalid", "type": ""}
        where = ".".join(first["loc"]) or "body"
        code = "invalid_id" if first["type"] == "invalid_id" else "invalid_input"
        raise Problem(code, f"{where}: {first['msg']}", errors=errors) from None


def wants_http_status(request: Request) -> bool:
    """``?http_status=true`` or ``Prefer: budget-status=http`` (any other ``http_status``
    than ``true`` or ``false`` is a 422 problem, as the OpenAPI document says)."""
    if read_query(CHECK_PARAMS, request.query_params).get("http_status") == "true":
        return True
    prefer = request.headers.get("prefer", "")
    return any(p.strip().lower() == "budget-status=http" for p in prefer.split(","))


def _sf_string(text: str) -> str:
    safe = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """``Retry-After`` and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields for a denial
    (draft-ietf-httpapi-ratelimit-headers; quota in the metric's integer unit).

    ``q``/``w`` are the blocking limit's ``limit`` and window: a budget's amount per period, a
    rate limit's rate per second/minute/hour (the same number as ``limit`` in the body, in
    ``status`` and in ``/v1/policy/effective``); ``r`` is its ``remaining`` (for a rate limit
    what the bucket lets go now, up to its ``burst``)."""
    retry = max(1, math.ceil(decision.retry_after or 1))
    headers = {"Retry-After": str(retry)}
    b = decision.blocked_by
    if b is not None:
        name = _sf_string(f"{b.scope}|{b.metric.value}|{b.period}")
        window = _WINDOW.get(b.period, 1)
        headers["RateLimit-Policy"] = f"{name};q={b.limit};w={window}"
        headers["RateLimit"] = f"{name};r={b.remaining};t={retry}"
    return headers


def path_scope(request: Request, prefix: str) -> Scope:
    """The scope in the raw path after ``prefix`` (URL-encoded; ``/`` may be left as is)."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    text = raw.decode("latin-1").split(prefix, 1)[-1]
    try:
        text = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise Problem("invalid_input", "scope: the URL is not valid UTF-8") from None
    why = scope_error(text)
    if why is not None:
        raise Problem("invalid_input", f"scope: {why}", errors=[
            {"loc": ["path", "scope"], "msg": why, "type": "invalid_input"}])
    return Scope.parse(text)


class Api:
    """Endpoint implementations bound to one :class:`~budgetlimiter.server.app.Server`."""

    def __init__(self, server: Server) -> None:
        self.s = server

    @property
    def limit(self) -> int:
        return self.s.config.max_body

    async def check(self, request: Request) -> Response:
        http_status = wants_http_status(request)  # a bad parameter: refused before any I/O
        req = await read_model(request, m.CheckRequest, self.limit)
        limiter = self.s.require_limiter()
        decision = await limiter.check(req.subject.to_subject(), req.estimate.to_usage(),
                                       reservation_id=req.reservation_id, ttl=req.ttl)
        self.s.metrics.decision(decision)
        if decision.degraded:
            self.s.metrics.redis_errors.inc()
        doc = decision.to_dict()
        if decision.allowed or not http_status:
            return json_response(doc)
        if decision.degraded:
            raise Problem("backend_unavailable", "Redis unavailable; the policy fails closed",
                          headers={"Retry-After": "1"}, decision=doc)
        code = "rate_limited" if decision.blocked_by and decision.blocked_by.kind == "rate" \
            else "budget_exceeded"
        raise Problem(code, str(decision), headers=ratelimit_headers(decision), decision=doc)

    async def commit(self, request: Request) -> Response:
        req = await read_model(request, m.CommitRequest, self.limit)
        if req.subject is not None and req.subject.org != req.org:
            raise Problem("org_mismatch", "subject.org must equal org (the reservation's)",
                          errors=[{"loc": ["subject", "org"], "msg": "must equal org",
                                   "type": "org_mismatch"}])
        limiter = self.s.require_limiter()
        subject = req.subject.to_subject() if req.subject is not None else None
        result = await limiter.commit_by_id(req.org, req.reservation_id, req.actual.to_usage(),
                                            subject=subject)
        self.s.metrics.settles.labels("commit", result.status).inc()
        return json_response(result.to_dict())

    async def release(self, request: Request) -> Response:
        req = await read_model(request, m.ReleaseRequest, self.limit)
        result = await self.s.require_limiter().release(req.reservation_id, org=req.org)
        self.s.metrics.settles.labels("release", result.status).inc()
        return json_response(result.to_dict())

    async def record(self, request: Request) -> Response:
        req = await read_model(request, m.RecordRequest, self.limit)
        result = await self.s.require_limiter().record(
            req.subject.to_subject(), req.actual.to_usage(), request_id=req.request_id)
        self.s.metrics.settles.labels("record", result.status).inc()
        return json_response(result.to_dict())

    async def check_batch(self, request: Request) -> Response:
        req = await read_model(request, m.BatchRequest, self.limit)
        items = [(i.subject.to_subject(), i.estimate.to_usage()) for i in req.items]
        limiter = self.s.require_limiter()
        decisions = await limiter.check_batch(items, ttl=req.ttl)
        for d in decisions:
            self.s.metrics.decision(d)
        return json_response({"decisions": [d.to_dict() for d in decisions]})

    async def status(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/status/")
        limits = await self.s.require_limiter().scope_status(scope)
        return json_response({"scope": str(scope), "limits": [s.to_dict() for s in limits]})

    async def forecast(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/forecast/")
        result = await self.s.forecasts.scope(scope)
        return json_response(result.to_dict())

    async def effective_policy(self, request: Request) -> Response:
        q = read_query(EFFECTIVE_PARAMS, request.query_params)
        subject = Subject(q["org"], q["agent"], team=q.get("team"), user=q.get("user"))
        policy = self.s.require_limiter().policy
        return json_response(policy.resolve(subject).to_dict())

    async def usage(self, request: Request) -> Response:
        from .reports import usage_report

        doc = await usage_report(self.s, request.query_params)
        return json_response(doc)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks, detail = await self.s.readiness()
        ok = all(checks.values())
        self.s.metrics.ready.set(1 if ok else 0)
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "checks": checks,
                                "detail": detail}
        if self.s.config.db_url:
            from .reconcile import status

            limiter = self.s.limiter
            body["reconcile"] = status(self.s.reconcile, limiter.clock() if limiter else 0)
        return json_response(body, 200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        from .metrics import CONTENT_TYPE

        await self.s.refresh_gauges()
        return Response(self.s.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return json_response(self.s.openapi())
