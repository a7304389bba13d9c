"""The hot endpoints at the ASGI level: read, parse, answer without Starlette's layers.

``POST /v1/check``, ``/v1/check:batch``, ``/v1/commit``, ``/v1/release`` and ``/v1/record``
are served by :class:`HotPath`, which the :class:`~budgetlimiter.server.middleware.Gate` (the
one middleware: request id, auth, metrics, access log) calls directly. Under load the
Starlette stack in between (error middleware, exception middleware, router, the dashboard
shell, the request/response wrappers) cost about a tenth of the sidecar's CPU for work these
endpoints do not need: every failure of a handler becomes a problem document here, exactly as
:func:`~budgetlimiter.server.handlers.endpoint` does for the other routes (both use
:func:`~budgetlimiter.server.problems.problem_for`).

Parsing tries orjson first and falls back to the standard library's ``json`` on any error,
so a body orjson refuses gets exactly the answer it always got (NaN, lone surrogates, huge
integers and deep nesting keep their old problem documents). Answers are encoded with orjson
when the result is plain ASCII, else with :func:`~budgetlimiter.server.problems.dumps`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from .problems import Problem, dumps, problem_for

if TYPE_CHECKING:
    from .app import Server
    from .config import Token

try:  # an optional speed-up (the ``server`` extra installs it)
    import orjson

    _orjson_loads: Callable[[bytes], Any] | None = orjson.loads
    _orjson_dumps: Callable[[Any], bytes] | None = orjson.dumps
    _ORJSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, orjson.JSONEncodeError)
except ImportError:  # pragma: no cover - orjson is in the server extra
    _orjson_loads = _orjson_dumps = None
    _ORJSON_ERRORS = ()

JSON_TYPE = b"application/json"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body`` or a 400 ``invalid_json`` problem (NaN and Infinity are
    not JSON and are refused). orjson parses what it can; anything it refuses goes through
    ``json.loads``, whose answer (a value or the error text) is the one the API documents."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(body)
        except _ORJSON_ERRORS:
            pass
    try:
        return json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise Problem("invalid_json", f"the body is not valid JSON: {str(exc)[:200]}") from None


def encode(data: Any) -> bytes:
    """JSON bytes of an answer: orjson when its output is ASCII (as :func:`dumps` promises),
    else :func:`dumps` (which escapes non-ASCII and refuses what is not JSON)."""
    if _orjson_dumps is not None:
        try:
            out = _orjson_dumps(data)
        except _ORJSON_ERRORS:
            return dumps(data)
        if out.isascii():
            return out
    return dumps(data)


_NONE: frozenset[str] = frozenset()
_PREFERS: dict[str, frozenset[str]] = {}


@dataclass(slots=True)
class Incoming:
    """What a hot handler needs of a request: its body, headers and query string."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    query: bytes = b""
    #: the token the gate accepted (None: auth is off); the handlers' org checks read it
    token: Token | None = None

    def header(self, name: bytes) -> str:
        """All values of a (lower-case) header, joined with ``,`` (RFC 9110 list syntax)."""
        found = [v.decode("latin-1") for k, v in self.headers if k == name]
        return ",".join(found)

    def query_params(self) -> QueryParams:
        return QueryParams(self.query.decode("latin-1"))

    def prefers(self) -> frozenset[str]:
        """The RFC 7240 preferences of ``Prefer`` (lower-case, without parameters)."""
        raw = self.header(b"prefer")
        if not raw:
            return _NONE
        found = _PREFERS.get(raw)
        if found is None:  # clients send the same one or two values over and over
            if len(_PREFERS) >= 1024:
                _PREFERS.clear()
            found = _PREFERS[raw] = frozenset(
                p.split(";", 1)[0].strip().lower() for p in raw.split(","))
        return found


@dataclass(slots=True)
class Answer:
    """A JSON answer of a hot handler (``body`` is encoded JSON)."""

    body: bytes
    status: int = 200
    headers: dict[str, str] | None = None


HotHandler = Callable[[Incoming], Awaitable[Answer]]


class Disconnected(Exception):
    """The client went away before its body arrived (nothing to answer)."""


def _too_large(limit: int) -> Problem:
    return Problem("payload_too_large", f"the request body limit is {limit} bytes")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class HotPath:
    """Serves the hot routes for the gate: body, handler, answer (or problem)."""

    def __init__(self, server: Server, routes: dict[str, HotHandler]) -> None:
        self.server = server
        self.routes = routes

    async def serve(self, handler: HotHandler, scope: Scope, receive: Receive, send: Send,
                    rid: str) -> int:
        """Answer one request; returns the HTTP status sent (499: the client went away)."""
        try:
            body = await read_body(scope, receive, self.server.config.max_body)
            answer = await handler(Incoming(body, scope["headers"],
                                            scope.get("query_string", b""),
                                            scope.get("state", {}).get("token")))
        except Disconnected:
            return 499
        except Exception as exc:
            problem = problem_for(self.server, exc, rid)
            answer = Answer(dumps(problem.body(rid)), problem.status, problem.headers)
            media = b"application/problem+json"
        else:
            media = JSON_TYPE
        raw = [(b"content-length", str(len(answer.body)).encode()), (b"content-type", media),
               (b"x-request-id", rid.encode("latin-1"))]
        if answer.headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": answer.body})
        return answer.status
