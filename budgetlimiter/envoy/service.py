"""The ``envoy.service.ratelimit.v3.RateLimitService`` servicer on grpc.aio.

One ``ShouldRateLimit`` call is one atomic decision over the whole hierarchy, made through
:class:`~budgetlimiter.aio.AsyncBudgetLimiter`'s public API:

* **request time, with a request id**: ``check(subject, estimate, reservation_id=id)`` —
  the estimate stays reserved until the stream-done call of the same id
  ``commit_by_id(org, id, actual, subject=subject)`` replaces it by the actual usage
  (idempotent by the id, priced with the agent's pricing; if the stream-done call never
  comes, the reservation's TTL refunds the estimate);
* **request time, without a request id**: the same check, its reservation released at once
  (rate limits stay charged); the stream-done call ``record``\\ s the usage.

Answers: admitted (soft limits exceeded included) → ``OK``; a hard limit → ``OVER_LIMIT``;
Redis unreachable → the policy's ``outage``: ``fail_open`` → ``OK``, ``fail_closed`` →
``OVER_LIMIT`` (not a gRPC error: Envoy lets a request through on an error unless its filter
sets ``failure_mode_deny``). Bad input → ``INVALID_ARGUMENT`` with the reason, nothing
counted; with tokens configured, a missing or wrong ``authorization: Bearer …`` metadata →
``UNAUTHENTICATED``, a read token → ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ..aio import AsyncBudgetLimiter
from ..engine.outage import UNAVAILABLE
from ..errors import BackendRejected, InvalidInput, ReservationSettled
from ..policy.envoy import EnvoyMapping
from ..server.auth import allowed, find_token
from ..server.config import Token
from ..subject import Subject
from ..usage import Usage
from .mapping import Call, InvalidRequest, parse_request
from .response import decision_response, ok_response

if TYPE_CHECKING:
    from ..server.metrics import Metrics

log = logging.getLogger("budgetlimiter.envoy")
SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
#: request ids checked at request time, remembered (the oldest forgotten first): a second
#: request-time call with an id is refused (a second reservation under one id would replace
#: the first, whose estimate would then never be refunded), and the stream-done call of a
#: refused request (Envoy sends one when its hits_addend is a number) counts nothing
SEEN_MEMORY = 131_072
#: stream-done commits kept for retry while Redis is unreachable
RETRY_LIMIT = 100_000


class _Retries:
    """Stream-done commits that could not reach Redis, retried with backoff until they land.

    ``commit_by_id`` is idempotent by the reservation id and, given the subject, counts the
    usage also after the reservation expired, so a retry is always safe. What is still here
    when the service stops is logged as lost."""

    def __init__(self, limiter: AsyncBudgetLimiter) -> None:
        self.limiter = limiter
        self.pending: OrderedDict[tuple[str, str], tuple[Subject, Usage]] = OrderedDict()
        self.task: asyncio.Task[None] | None = None

    def add(self, org: str, rid: str, subject: Subject, usage: Usage) -> None:
        if len(self.pending) >= RETRY_LIMIT:
            (old_org, old_id), _ = self.pending.popitem(last=False)
            log.error("stream-done retry queue full: usage of %s/%s dropped", old_org, old_id)
        self.pending[(org, rid)] = (subject, usage)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = 0.5
        while self.pending:
            await asyncio.sleep(delay)
            delay = 0.5 if await self.flush() else min(delay * 2, 30.0)

    async def flush(self) -> bool:
        """Send what waits; ``False`` when Redis is still unreachable."""
        for (org, rid), (subject, usage) in list(self.pending.items()):
            try:
                await self.limiter.commit_by_id(org, rid, usage, subject=subject)
            except UNAVAILABLE:
                return False
            except Exception as exc:
                log.error("stream-done commit of %s/%s dropped: %s", org, rid, exc)
            self.pending.pop((org, rid), None)
        return True

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.pending and not await self.flush():
            log.error("stopping with Redis unreachable: %d stream-done commits are lost "
                      "(their reservations expire and refund the estimates)", len(self.pending))


class RateLimitServicer:
    """``ShouldRateLimit`` on an :class:`~budgetlimiter.aio.AsyncBudgetLimiter`.

    ``mapping`` is read from the limiter's policy (its ``envoy:`` section, defaults when
    absent) on every call unless given, so a policy reload applies to it too. ``tokens``
    (:func:`budgetlimiter.server.parse_tokens`) turn on bearer-token checks of the
    ``authorization`` metadata; ShouldRateLimit needs a ``write`` token. ``metrics`` (the
    sidecar's :class:`~budgetlimiter.server.metrics.Metrics`) counts the calls by gRPC code,
    their decisions and stream-done settles like the HTTP API's.
    """

    def __init__(self, limiter: AsyncBudgetLimiter, mapping: EnvoyMapping | None = None,
                 tokens: Sequence[Token] = (), metrics: Metrics | None = None) -> None:
        self.limiter = limiter
        self.mapping = mapping
        self.tokens = tuple(tokens)
        self.metrics = metrics
        self.retries = _Retries(limiter)
        self._seen: OrderedDict[tuple[str, str], bool] = OrderedDict()  # -> admitted
        self._tasks: set[asyncio.Task[Any]] = set()

    def current_mapping(self) -> EnvoyMapping:
        """The mapping in force: the one given, else the policy's, else the defaults."""
        if self.mapping is not None:
            return self.mapping
        return self.limiter.policy.envoy or _DEFAULT_MAPPING

    async def ShouldRateLimit(self, request: Any,
                              context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Decide one request (or count its usage at stream end); see the module doc."""
        code = "OK"
        try:
            if self.tokens:  # (no coroutine per call without tokens)
                await self._authorize(context)
            call = parse_request(request, self.current_mapping())
            if call.phase == "stream_done":
                return await self._stream_done(call, len(request.descriptors), context)
            return await self._request_time(call)
        except InvalidInput as exc:
            code = "INVALID_ARGUMENT"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:1000])
        except BackendRejected as exc:
            code = "INTERNAL"
            log.error("redis refused the service's credentials: %s", exc)
            await context.abort(grpc.StatusCode.INTERNAL, "Redis refused the credentials")
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:  # from _authorize or _stream_done: code() says which
            code = _code_name(context)
            raise
        except BaseException:
            code = "UNKNOWN"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.grpc_call("ShouldRateLimit", code)
        raise AssertionError("unreachable")  # pragma: no cover (abort raises)

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.tokens:
            return
        given = next((str(value) for key, value in context.invocation_metadata() or ()
                      if key == "authorization"), None)
        token = find_token(self.tokens, given)
        if token is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown bearer token in the authorization metadata")
        elif not allowed(token, "POST"):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"token {token.name!r} is read-only; ShouldRateLimit needs a "
                                "write token")

    async def _request_time(self, call: Call) -> Any:
        limiter, rid = self.limiter, call.request_id
        key = (call.subject.org, rid or "")
        if rid is not None:
            if key in self._seen:
                raise InvalidRequest(f"request id {rid[:80]!r} was already checked; request "
                                     "ids must be unique per request")
            self._seen[key] = True  # (before the await: a concurrent duplicate is refused)
            if len(self._seen) > SEEN_MEMORY:
                self._seen.popitem(last=False)
        try:
            decision = await limiter.check(call.subject, call.usage, reservation_id=rid)
        except InvalidInput:  # refused before anything was written: the id stays free
            self._seen.pop(key, None)
            raise
        if self.metrics is not None:
            self.metrics.decision(decision)
            if decision.degraded:
                self.metrics.redis_errors.inc()
        if rid is None:
            if decision.reservation is not None:  # rates stay charged; usage comes by record
                self._spawn(limiter.release(decision.reservation))
        elif not decision.allowed:
            self._seen[key] = False
        return decision_response(decision, call, limiter.clock())

    async def _stream_done(self, call: Call, descriptors: int,
                           context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        limiter, rid, org = self.limiter, call.request_id, call.subject.org
        op, status = ("record" if rid is None else "commit"), ""
        try:
            if rid is None:
                status = (await limiter.record(call.subject, call.usage)).status
            elif self._seen.get((org, rid)) is False:
                log.info("stream done for %s/%s, refused at request time: nothing counted",
                         org, rid)
            else:
                status = (await limiter.commit_by_id(org, rid, call.usage,
                                                     subject=call.subject)).status
        except ReservationSettled as exc:  # released by someone else: its usage is theirs
            status = "settled"
            log.warning("stream done for %s/%s: %s", org, rid, exc)
        except UNAVAILABLE:  # (BackendUnavailable, an open circuit, is a ConnectionError)
            assert rid is not None  # record keeps its own outage queue and does not raise
            if self.metrics is not None:
                self.metrics.settles.labels(op, "queued").inc()
                self.metrics.redis_errors.inc()
            self.retries.add(org, rid, call.subject, call.usage)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "Redis unreachable: the usage is kept in this process and "
                                "committed when Redis is back")
        if status and self.metrics is not None:
            self.metrics.settles.labels(op, status).inc()
        return ok_response(descriptors)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background release failed: %r", task.exception())

    async def aclose(self) -> None:
        """Finish background releases and retry what waits for Redis once more."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.retries.aclose()


_DEFAULT_MAPPING = EnvoyMapping()


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def add_ratelimit_servicer(server: grpc.aio.Server, limiter: AsyncBudgetLimiter,
                           mapping: EnvoyMapping | None = None,
                           tokens: Sequence[Token] = (),
                           metrics: Metrics | None = None) -> RateLimitServicer:
    """Register the rate limit service on a grpc.aio ``server`` (not started yet)."""
    servicer = RateLimitServicer(limiter, mapping, tokens, metrics)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    return servicer


__all__ = ["SERVICE_NAME", "RateLimitServicer", "add_ratelimit_servicer", "rls_pb2"]
