"""The asyncio client: the same core as :class:`~budgetlimiter.client.BudgetLimiter`, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .backends import connect_async
from .calls import ScriptCall
from .coalesce import Coalescer, pipeline_replies
from .errors import BackendRejected, BackendUnavailable
from .guard import AsyncGuard, Extractor, OnCommit
from .keys import DEFAULT_PREFIX
from .leases import Lease, LeaseConfig
from .policy import Policy
from .results import Decision, LimitStatus, Reservation, SettleResult
from .scripts import run_async
from .shell import REJECTED, UNAVAILABLE, ClientBase, Clock, Deferred
from .subject import Scope, Subject
from .usage import Usage

#: asyncio socket timeouts also count the time the event loop is busy with other tasks, so
#: the async default is larger than the sync one (50 ms) to not mistake load for an outage
DEFAULT_ASYNC_TIMEOUT = 0.25


class AsyncBudgetLimiter(ClientBase):
    """Asyncio twin of :class:`~budgetlimiter.client.BudgetLimiter` (same arguments).

    With ``coalesce`` (the default) concurrent calls from many tasks share pipelines over at
    most ``max_inflight`` connections, ``max_batch`` calls per pipeline; see
    :mod:`budgetlimiter.coalesce`.
    """

    def __init__(self, policy: Policy | str | Path, redis: str | Any = "memory://", *,
                 prefix: str = DEFAULT_PREFIX, clock: Clock | None = None,
                 timeout: float = DEFAULT_ASYNC_TIMEOUT, cluster: bool | None = None,
                 deny_cache_ttl: float | None = 5.0,
                 coalesce: bool = True, max_batch: int = 128, max_inflight: int = 4,
                 leases: LeaseConfig | None = None) -> None:
        super().__init__(policy, redis, connect_async, timeout=timeout, cluster=cluster,
                         prefix=prefix, clock=clock, deny_cache_ttl=deny_cache_ttl,
                         leases=leases)
        #: subjects whose lease is being opened by some task (the others wait for it)
        self._lease_opening: dict[Subject, asyncio.Future[None]] = {}
        self._lease_returns: set[asyncio.Task[None]] = set()
        self.coalescer = Coalescer(self.redis, self.scripts, max_batch=max_batch,
                                   max_inflight=max_inflight) if coalesce else None

    async def _run(self, call: ScriptCall) -> Any:
        if not self.breaker.allow():
            raise BackendUnavailable("redis circuit open")
        try:
            if self.coalescer is not None:
                reply = await self.coalescer.run(call)
            else:
                reply = await run_async(self.redis, self.scripts[call.script], call.keys,
                                        call.args)
        except REJECTED as exc:  # before UNAVAILABLE: redis-py makes them ConnectionErrors
            raise BackendRejected(f"redis rejected the client: {exc}") from None
        except UNAVAILABLE:
            self.breaker.failure()
            raise
        self.breaker.success()
        return reply

    async def _settle(self, call: ScriptCall) -> SettleResult:
        reply = await self._run(call)
        if self._dirty_follow_up(call, reply):
            await self.redis.sadd(self.core.keys.dirty_orgs, call.org)
        result: SettleResult = call.parse(reply)
        return result

    async def flush_local(self) -> int:
        """Replay commits and records kept in-process during an outage. Returns how many."""
        done = 0
        while self.pending_local:
            op = self.pending_local[0]
            if op.reservation is not None:
                await self._settle(self.core.plan_commit(op.reservation, op.usage, self.clock()))
            else:
                assert op.subject is not None
                await self._settle(self.core.plan_record(op.subject, op.usage, self.clock(),
                                                     op.request_id))
            self.pending_local.popleft()
            done += 1
        return done

    async def check(self, subject: Subject, estimate: Usage | None = None, *,
                    reservation_id: str | None = None, ttl: float | None = None) -> Decision:
        """See :meth:`BudgetLimiter.check`."""
        if self.leases is not None:
            leased = await self._check_leased(subject, estimate, reservation_id, ttl)
            if leased is not None:
                # a leased answer never suspends: yield once so that a task checking in a
                # loop does not starve the others (and drain the lease alone)
                await asyncio.sleep(0)
                return leased
        call, est, now, cached = self._prepare_check(subject, estimate, reservation_id, ttl)
        if cached is not None:
            return cached
        try:
            reply = await self._run(call)
        except UNAVAILABLE as exc:
            return self._unavailable_decision(call, subject, est, exc)
        if self.pending_local:
            with contextlib.suppress(*UNAVAILABLE):
                await self.flush_local()
        return self._decided(call, reply, now)

    async def _check_leased(self, subject: Subject, estimate: Usage | None,
                            reservation_id: str | None, ttl: float | None) -> Decision | None:
        self._return_leases()
        decision, slice_usage, amounts, now = self._lease_take(subject, estimate,
                                                               reservation_id, ttl)
        if decision is not None or slice_usage is None:
            return decision
        assert self.leases is not None
        opening = self._lease_opening.get(subject)
        if opening is not None:  # another task is opening this subject's lease: share it
            await asyncio.shield(opening)
            return self.leases.take(subject, amounts, self.clock())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lease_opening[subject] = done
        try:
            opened = await self.check(subject, slice_usage,
                                      ttl=self.leases.config.ttl_seconds)
            return self._lease_opened(subject, opened, amounts, now)
        finally:
            del self._lease_opening[subject]
            done.set_result(None)

    def _return_leases(self, *, force: bool = False) -> asyncio.Task[None] | None:
        """Return due leases in a background task (a check never waits for it)."""
        due = self._leases_due(force=force)
        if not due:
            return None
        task = asyncio.get_running_loop().create_task(self._send_returns(due))
        self._lease_returns.add(task)
        task.add_done_callback(self._lease_returns.discard)
        return task

    async def _send_returns(self, due: list[tuple[Lease, ScriptCall]]) -> None:
        for lease, call in due:
            try:
                await self._settle(call)
            except UNAVAILABLE as exc:
                self._lease_return_failed(lease, exc)

    async def return_leases(self) -> None:
        """See :meth:`BudgetLimiter.return_leases`."""
        self._return_leases(force=True)
        if self._lease_returns:
            await asyncio.gather(*self._lease_returns, return_exceptions=True)

    async def commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """See :meth:`BudgetLimiter.commit`."""
        if isinstance(reservation, Reservation) and reservation.local:
            return self._local_commit(reservation, actual)
        if isinstance(reservation, Reservation) and reservation.lease:
            result, _ = self._lease_settle(reservation, actual)
            self._return_leases()
            if result is not None:
                return result
            return await self.record(reservation.subject, actual,
                                     request_id="lease-" + reservation.id)
        call = self.core.plan_commit(reservation, actual, self.clock())
        try:
            return await self._settle(call)
        except UNAVAILABLE:
            return self._defer(Deferred(usage=actual, reservation=reservation))

    async def release(self, reservation: Reservation | str, *,
                      org: str | None = None) -> SettleResult:
        """See :meth:`BudgetLimiter.release`."""
        if isinstance(reservation, Reservation) and reservation.lease:
            result, _ = self._lease_settle(reservation, None)
            self._return_leases()
            return result or SettleResult(status="released", id=reservation.id)
        prepared = self._prepare_release(reservation, org)
        if isinstance(prepared, SettleResult):
            return prepared
        call, rid = prepared
        try:
            return await self._settle(call)
        except UNAVAILABLE:  # the reservation's TTL refunds it
            return SettleResult(status="local", id=rid)

    async def record(self, subject: Subject, actual: Usage, *,
                     request_id: str | None = None) -> SettleResult:
        """See :meth:`BudgetLimiter.record`."""
        rid = request_id if request_id is not None else uuid.uuid4().hex
        call = self.core.plan_record(subject, actual, self.clock(), rid)
        try:
            return await self._settle(call)
        except UNAVAILABLE:
            return self._defer(Deferred(usage=actual, subject=subject, request_id=rid))

    async def status(self, subject: Subject) -> tuple[LimitStatus, ...]:
        """See :meth:`BudgetLimiter.status`."""
        call = self.core.plan_status(subject, self.clock())
        decision: Decision = call.parse(await self._run(call))
        return decision.limits

    async def scope_status(self, scope: Scope | str) -> tuple[LimitStatus, ...]:
        """Live counters of the limits declared for one scope, e.g. ``"org:acme/team:eng"``."""
        target = scope if isinstance(scope, Scope) else Scope.parse(scope)
        call = self.core.plan_scope_status(target, self.clock())
        decision: Decision = call.parse(await self._run(call))
        return decision.limits

    async def check_batch(self, items: Iterable[tuple[Subject, Usage]], *,
                          ttl: float | None = None) -> list[Decision]:
        """See :meth:`BudgetLimiter.check_batch`."""
        now = self.clock()
        calls = [self.core.plan_check(s, u, now, ttl_seconds=ttl) for s, u in items]
        if not calls:
            return []
        replies = await self._pipeline(calls)
        return [self._decided(call, reply, now) for call, reply in zip(calls, replies,
                                                                      strict=True)]

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        replies = await pipeline_replies(self.redis, self.scripts, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def guard(self, subject: Subject, estimate: Usage | None = None, *,
              extract: Extractor | None = None, ttl: float | None = None,
              on_commit: OnCommit | None = None) -> AsyncGuard:
        """``async with`` block or decorator of coroutine functions; see :class:`AsyncGuard`."""
        return AsyncGuard(self, subject, estimate or Usage(), extract=extract, ttl=ttl,
                          on_commit=on_commit)

    def guard_stream(self, subject: Subject, estimate: Usage, stream: Any,
                     **kwargs: Any) -> Any:
        """A guarded async stream; see :func:`budgetlimiter.streaming.guarded_astream`."""
        from .streaming import guarded_astream

        return guarded_astream(self, subject, estimate, stream, **kwargs)

    async def aclose(self) -> None:
        """Return open leases, then close the connection pool."""
        if self.leases is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await self.return_leases()
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncBudgetLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
