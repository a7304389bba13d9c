"""The HTTP endpoints: each parses strictly, calls the library, and answers JSON or a problem."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..results import Decision
from ..subject import Scope, Subject
from . import models as m
from .auth import request_token, require_org, require_org_of
from .bodies import CheckBodies
from .fastpath import Answer, HotHandler, Incoming, encode, parse_json
from .params import CHECK_PARAMS, EFFECTIVE_PARAMS, read_query, scope_error
from .problems import Problem, dumps, problem_for

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
_WINDOW = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000,
           "per second": 1, "per minute": 60, "per hour": 3600}
#: RFC 7240: say which preference shaped the answer
_APPLIED = {"Preference-Applied": "return=minimal"}


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
        except Exception as exc:
            rid = request_id(request)
            return problem_for(server, exc, rid).response(rid)

    return wrapped


def hot_route(server: Server, fn: HotHandler) -> Handler:
    """A hot handler as a Starlette endpoint (the gate serves these paths itself; the route
    is what answers other methods with 405)."""

    async def as_route(request: Request) -> Response:
        body = await read_body(request, server.config.max_body)
        answer = await fn(Incoming(body, request.scope["headers"],
                                   request.scope.get("query_string", b""),
                                   request_token(request)))
        return Response(answer.body, status_code=answer.status, headers=answer.headers,
                        media_type="application/json")

    return endpoint(server, as_route)


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


def read_model(incoming: Incoming, model: type[M]) -> M:
    """Parse and validate a JSON body (NaN and Infinity are not JSON and are refused)."""
    return validate(parse_json(incoming.body), model)


def validate(data: Any, model: type[M]) -> M:
    """Validate a parsed JSON body; a 422 problem naming the first field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors(include_url=False, include_input=False)[:20]]
        first = errors[0] if errors else {"loc": [], "msg": "invalid", "type": ""}
        where = ".".join(first["loc"]) or "body"
        code = "invalid_id" if first["type"] == "invalid_id" else "invalid_input"
        raise Problem(code, f"{where}: {first['msg']}", errors=errors) from None


def wants_http_status(incoming: Incoming, prefers: frozenset[str]) -> bool:
    """``?http_status=true`` or ``Prefer: budget-status=http`` (any other ``http_status``
    than ``true`` or ``false`` is a 422 problem, as the OpenAPI document says)."""
    if incoming.query and read_query(CHECK_PARAMS, incoming.query_params()).get(
            "http_status") == "true":
        return True
    return "budget-status=http" in prefers


def minimal_decision(decision: Decision) -> dict[str, Any]:
    """The compact answer of ``Prefer: return=minimal``."""
    return {"allowed": decision.allowed,
            "reservation_id": decision.reservation.id if decision.reservation else None,
            "retry_after": decision.retry_after,
            "blocked_by": decision.blocked_by.to_dict() if decision.blocked_by else None}


def _answer(doc: Any, minimal: bool) -> Answer:
    return Answer(encode(doc), headers=_APPLIED if minimal else None)


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
    """The scope in the path after ``prefix``, percent-decoded from the raw path (a scope's
    text has its own ``%XX`` escapes); a 422 problem naming ``scope`` when it is not one."""
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
        self._bodies = CheckBodies(server)

    @property
    def limit(self) -> int:
        return self.s.config.max_body

    async def check(self, incoming: Incoming) -> Answer:
        prefers = incoming.prefers()
        # a bad parameter: refused before any I/O
        http_status = wants_http_status(incoming, prefers)
        minimal = "return=minimal" in prefers
        data = parse_json(incoming.body)
        plain = self._bodies.read(data)
        rid: str | None = None
        ttl: float | None = None
        if plain is not None:
            subject, usage = plain
        else:
            req = validate(data, m.CheckRequest)
            subject, usage = self.s.subject(req.subject), self.s.usage(req.estimate)
            rid, ttl = req.reservation_id, req.ttl
        require_org_of(incoming.token, subject.org)
        limiter = self.s.require_limiter()
        # the engine's flow driven directly: AsyncBudgetLimiter.check also yields to the loop
        # after a leased answer (so that a task checking in a loop cannot starve the others);
        # a request here is a task of its own that ends with its answer, so that loop turn
        # was pure cost on the hot path (~5 us of a leased check)
        decision = await limiter.run(limiter.engine.check(
            subject, usage, reservation_id=rid, ttl=ttl))
        self.s.metrics.decision(decision)
        if decision.degraded:
            self.s.metrics.redis_errors.inc()
        doc = minimal_decision(decision) if minimal else decision.to_dict()
        if decision.allowed or not http_status:
            return _answer(doc, minimal)
        if decision.degraded:
            raise Problem("backend_unavailable", "Redis unavailable; the policy fails closed",
                          headers={"Retry-After": "1"}, decision=doc)
        code = "rate_limited" if decision.blocked_by and decision.blocked_by.kind == "rate" \
            else "budget_exceeded"
        raise Problem(code, str(decision), headers=ratelimit_headers(decision), decision=doc)

    async def commit(self, incoming: Incoming) -> Answer:
        req = read_model(incoming, m.CommitRequest)
        require_org_of(incoming.token, req.org)
        if req.subject is not None and req.subject.org != req.org:
            raise Problem("org_mismatch", "subject.org must equal org (the reservation's)",
                          errors=[{"loc": ["subject", "org"], "msg": "must equal org",
                                   "type": "org_mismatch"}])
        limiter = self.s.require_limiter()
        subject = self.s.subject(req.subject) if req.subject is not None else None
        result = await limiter.commit_by_id(req.org, req.reservation_id, self.s.usage(req.actual),
                                            subject=subject)
        self.s.metrics.settled("commit", result.status)
        return Answer(encode(result.to_dict()))

    async def release(self, incoming: Incoming) -> Answer:
        req = read_model(incoming, m.ReleaseRequest)
        require_org_of(incoming.token, req.org)
        result = await self.s.require_limiter().release(req.reservation_id, org=req.org)
        self.s.metrics.settled("release", result.status)
        return Answer(encode(result.to_dict()))

    async def record(self, incoming: Incoming) -> Answer:
        req = read_model(incoming, m.RecordRequest)
        require_org_of(incoming.token, req.subject.org)
        result = await self.s.require_limiter().record(
            self.s.subject(req.subject), req.actual.to_usage(), request_id=req.request_id)
        self.s.metrics.settled("record", result.status)
        return Answer(encode(result.to_dict()))

    async def check_batch(self, incoming: Incoming) -> Answer:
        minimal = "return=minimal" in incoming.prefers()
        req = read_model(incoming, m.BatchRequest)
        require_org_of(incoming.token, *{i.subject.org for i in req.items})
        items = [(self.s.subject(i.subject), self.s.usage(i.estimate)) for i in req.items]
        limiter = self.s.require_limiter()
        decisions = await limiter.check_batch(items, ttl=req.ttl)
        for d in decisions:
            self.s.metrics.decision(d)
        docs = [minimal_decision(d) if minimal else d.to_dict() for d in decisions]
        return _answer({"decisions": docs}, minimal)

    def hot_routes(self) -> dict[str, HotHandler]:
        """The POST endpoints the gate serves without the router."""
        return {"/v1/check": self.check, "/v1/check:batch": self.check_batch,
                "/v1/commit": self.commit, "/v1/release": self.release,
                "/v1/record": self.record}

    async def status(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/status/")
        require_org(request, scope.org)
        limits = await self.s.require_limiter().scope_status(scope)
        return json_response({"scope": str(scope), "limits": [s.to_dict() for s in limits]})

    async def forecast(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/forecast/")
        require_org(request, scope.org)
        result = await self.s.forecasts.scope(scope)
        return json_response(result.to_dict())

    async def effective_policy(self, request: Request) -> Response:
        q = read_query(EFFECTIVE_PARAMS, request.query_params)
        require_org(request, q["org"])
        subject = Subject(q["org"], q["agent"], team=q.get("team"), user=q.get("user"))
        policy = self.s.require_limiter().policy
        doc = policy.resolve(subject).to_dict()
        # which limits come from an override says each limit's origin ("override vN...")
        doc["overrides_version"] = policy.overrides.version if policy.overrides else 0
        return json_response(doc)

    async def usage(self, request: Request) -> Response:
        from .reports import usage_report

        org = request.query_params.get("org")
        if org is not None:
            require_org(request, org)
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

        require_org(request)  # the metrics cover every org
        await self.s.refresh_gauges()
        return Response(self.s.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return json_response(self.s.openapi())
