"""An OpenAI-compatible HTTP proxy that enforces budgets per API key.

Each proxy API key maps to an org / team / user; the requested ``model`` is the agent. For every
``POST /v1/chat/completions`` or ``POST /v1/responses`` the proxy estimates an upper bound from
the request body (prompt size + ``max_*tokens``), checks and reserves it on every scope of the
hierarchy in one Redis round trip, forwards the request upstream, and commits the usage the
upstream reports (streamed or not). A denied request gets ``429`` with a JSON body naming the
scope and limit that blocked it (with what the request needed: ``limit.requested``) and
``retry_after``; it never reaches the upstream. When the upstream connection breaks in the
middle of a stream, the client's stream ends with an error event the OpenAI SDKs raise as an
``APIError`` (``data: {"error": {...}}``), what was streamed is billed, and one line is logged.

Run it (the fake upstream in ``fake_upstream.py`` stands in for a provider)::

    python examples/fake_upstream.py --port 9000 &
    python examples/openai_proxy.py --upstream http://127.0.0.1:9000 --redis memory://
    curl -s localhost:8080/v1/chat/completions -H 'Authorization: Bearer sk-acme-eng-alice' \\
         -d '{"model": "gpt-4o", "max_tokens": 200,
              "messages": [{"role": "user", "content": "hi"}]}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from budgetlimiter import (
    AsyncBudgetLimiter,
    BudgetExceeded,
    Decision,
    Subject,
    Usage,
    load_policy,
    parse_policy,
)
from budgetlimiter.errors import InvalidInput
from budgetlimiter.estimate import estimate_openai_chat, estimate_openai_responses
from budgetlimiter.extract import extract_usage
from budgetlimiter.streaming import guarded_astream

log = logging.getLogger("budgetlimiter.examples.openai_proxy")

#: proxy API key -> (org, team, user); in production: a database or your gateway's auth
KEYS: dict[str, tuple[str, str | None, str | None]] = {
    "sk-acme-eng-alice": ("acme", "eng", "alice"),
    "sk-acme-eng-bob": ("acme", "eng", "bob"),
    "sk-acme-ops-carol": ("acme", "ops", "carol"),
}

#: models priced by the shipped table (budgetlimiter/data/pricing.yaml) unless listed here
POLICY = """
pricing: {in-house-llm: {input_per_million: "0.50", output_per_million: "1.50"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "100", period: month}]
    teams:
      eng:
        limits: [{metric: cost, amount: "5", period: day}]
        defaults: {user: {limits: [{metric: cost, amount: "2", period: day}]}}
      ops:
        limits: [{metric: cost, amount: "1", period: day}]
        rates: [{metric: invocations, limit: 10, per: second}]
"""

ESTIMATORS: dict[str, Callable[[Mapping[str, Any]], Usage]] = {
    "/v1/chat/completions": estimate_openai_chat,
    "/v1/responses": estimate_openai_responses,
}


def error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    """An OpenAI-style error body: ``{"error": {"type", "code", "message", ...}}``."""
    body = {"error": {"type": kind, "code": kind, "message": message, **extra}}
    return JSONResponse(body, status_code=status)


def denied(decision: Decision) -> JSONResponse:
    """429 naming the scope, metric, period and amounts that blocked, and when to retry."""
    blocked = decision.blocked_by.to_dict() if decision.blocked_by else {}
    retry = decision.retry_after
    response = error(429, decision.reason or "budget_exceeded", str(decision),
                     scope=blocked.get("scope"), limit=blocked, retry_after=retry)
    if retry is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return response


def create_app(limiter: AsyncBudgetLimiter, upstream: str, *,
               keys: Mapping[str, tuple[str, str | None, str | None]] = KEYS,
               upstream_key: str | None = None, http: httpx.AsyncClient | None = None
               ) -> Starlette:
    """The proxy app: ``limiter`` enforces, ``upstream`` is the provider's base URL."""
    client = http or httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=120)
    auth = {"Authorization": f"Bearer {upstream_key}"} if upstream_key else {}

    async def proxy(request: Request) -> Response:
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if key not in keys:
            return error(401, "invalid_api_key", "unknown proxy API key")
        try:
            body = await request.json()
            org, team, user = keys[key]
            subject = Subject(org, str(body["model"]), team=team, user=user)
            estimate = ESTIMATORS[request.url.path](body)
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, "invalid_request_error", f"bad request: {exc}")
        if body.get("stream") and "messages" in body:  # make the final chunk carry usage
            body["stream_options"] = {**(body.get("stream_options") or {}),
                                      "include_usage": True}
        upstream_request = client.build_request("POST", request.url.path, json=body,
                                                headers=auth)
        try:
            if body.get("stream"):
                return await stream(subject, estimate, upstream_request)
            async with limiter.guard(subject, estimate) as guard:
                reply = await client.send(upstream_request)
                if reply.status_code >= 400:  # not billed: the guard releases
                    raise UpstreamError(reply.status_code, reply.content)
                guard.set_actual(extract_usage(reply.json()) or estimate)
            return Response(reply.content, media_type="application/json")
        except BudgetExceeded as exc:
            return denied(exc.decision)  # type: ignore[arg-type]
        except UpstreamError as exc:
            return Response(exc.content, status_code=exc.status,
                            media_type="application/json")
        except InvalidInput as exc:  # e.g. UnknownAgent: a model with no price
            return error(400, "invalid_request_error", str(exc))
        except httpx.HTTPError as exc:  # upstream unreachable: reservation released
            return error(502, "upstream_error", f"upstream failed: {exc!r}")

    async def stream(subject: Subject, estimate: Usage,
                     upstream_request: httpx.Request) -> Response:
        opened: list[httpx.Response] = []

        async def open_upstream() -> AsyncIterator[bytes]:
            opened.append(await client.send(upstream_request, stream=True))
            return relay(opened[0])

        # raw SSE bytes pass through unchanged; the guard parses them for the usage
        chunks = await guarded_astream(limiter, subject, estimate, open_upstream)
        reply = opened[0]
        if reply.status_code >= 400:
            content = await reply.aread()
            await reply.aclose()
            await chunks.aclose()  # nothing consumed: released
            raise UpstreamError(reply.status_code, content)
        return StreamingResponse(relay_to_client(subject, chunks),
                                 media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if http is None:  # the client we made
            await client.aclose()

    return Starlette(routes=[Route(path, proxy, methods=["POST"]) for path in ESTIMATORS],
                     lifespan=lifespan)


def sse_error(message: str, code: str) -> bytes:
    """An error event as the OpenAI SDKs read it in a stream: they raise ``APIError`` with
    ``message`` for a ``data:`` payload whose ``error`` member is an object."""
    error = {"message": message, "type": "upstream_error", "code": code}
    return f"data: {json.dumps({'error': error})}\n\n".encode()


async def relay_to_client(subject: Subject, chunks: Any) -> AsyncIterator[bytes]:
    """The guarded upstream stream, to the client. An upstream that breaks mid-stream (reset,
    timeout, truncated body) ends the client's stream with an error event instead of a broken
    connection; the guard has committed what was streamed by then (reported usage, else the
    estimate's input and the output counted from the chunks)."""
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            yield chunk
    except httpx.HTTPError as exc:
        result = chunks.result
        cost = result.cost_usd if result is not None else None
        log.warning("upstream stream for %s broke after %d bytes (%s: %s); billed %s USD",
                    subject, sent, type(exc).__name__, str(exc)[:200] or "no detail", cost)
        yield sse_error("the upstream connection was lost in the middle of the stream; what "
                        "was streamed is billed", "upstream_stream_interrupted")
    finally:
        await chunks.aclose()


async def relay(reply: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in reply.aiter_raw():
            yield chunk
    finally:
        await reply.aclose()


class UpstreamError(Exception):
    def __init__(self, status: int, content: bytes) -> None:
        super().__init__(status)
        self.status, self.content = status, content


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="https://api.openai.com")
    parser.add_argument("--redis", default="memory://")
    parser.add_argument("--policy", help="policy file (default: the example policy above)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    policy = load_policy(args.policy) if args.policy else parse_policy(POLICY)
    limiter = AsyncBudgetLimiter(policy, args.redis)
    app = create_app(limiter, args.upstream, upstream_key=os.environ.get("UPSTREAM_API_KEY"))
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
