"""The asyncio client: the same core as :class:`~budgetlimiter.client.BudgetLimiter`, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .backends import connect_async
from .coalesce import Coalescer, pipeline_replies
from .engine.calls import ScriptCall
from .engine.keys import DEFAULT_PREFIX
from .engine.lease_client import LeaseWork, Opening
from .engine.leases import LeaseConfig
from .engine.scripts import run_async
from .engine.shell import REJECTED, UNAVAILABLE, ClientBase, Clock, Deferred
from .errors import BackendRejected, BackendUnavailable
from .guard import AsyncGuard, Extractor, OnCommit
from .policy import Policy
from .results import Decision, LimitStatus, Reservation, SettleResult
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
        self._lease_timer: asyncio.TimerHandle | None = None
        self._closing = False
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
            self.breaker.success()  # Redis answered: it is there, it refused us
            raise BackendRejected(f"redis rejected the client: {exc}") from None
        except UNAVAILABLE:
            self.breaker.failure()
            raise
        except BaseException:  # an error reply, a cancellation: free a half-open probe
            self.breaker.abandon()
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
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    if leased.reservation is not None:
                        self._lease_settle(leased.reservation, None)
                    raise
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
        decision, opening = self._lease_take(subject, estimate, reservation_id, ttl)
        if decision is not None:
            return decision
        # a lease that take() just retired gives its unused part back before Redis decides
        self._return_leases()
        if self._lease_returns:
            await asyncio.gather(*list(self._lease_returns), return_exceptions=True)
        if opening is None:
            return None
        assert self.leases is not None
        pending = self._lease_opening.get(subject)
        if pending is not None:  # another task is opening this subject's lease: share it
            await asyncio.shield(pending)
            return self.leases.take(subject, opening.amounts, self.clock())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lease_opening[subject] = done
        try:
            ask = asyncio.ensure_future(
                self.check(subject, opening.slice, ttl=self.leases.config.ttl_seconds,
                           reservation_id=opening.lease_id))
            try:
                answer = await asyncio.shield(ask)
            except asyncio.CancelledError:
                # the slice may be reserved in Redis already: register it when it answers,
                # so that it is used or handed back, never stranded
                ask.add_done_callback(lambda t: self._adopt_lease(opening, t))
                raise
            decision = self._lease_opened(opening, answer)
            self._schedule_lease_timer()
            return decision
        finally:
            del self._lease_opening[subject]
            done.set_result(None)

    def _adopt_lease(self, opening: Opening, ask: asyncio.Future[Decision]) -> None:
        if ask.cancelled() or ask.exception() is not None:
            return
        self._lease_opened(opening, ask.result())
        if self._closing:  # closed meanwhile: hand it straight back
            self._return_leases(force=True)
        else:
            self._schedule_lease_timer()

    def _return_leases(self, *, force: bool = False,
                       scan: bool = False) -> asyncio.Task[None] | None:
        """Hand due leases back in a background task (a check never waits for it)."""
        work = self._lease_work(force=force, scan=scan)
        if not work:
            return None
        task = asyncio.get_running_loop().create_task(self._send_lease_work(work))
        self._lease_returns.add(task)
        task.add_done_callback(self._lease_returns.discard)
        return task

    async def _send_lease_work(self, work: list[LeaseWork]) -> None:
        for item in work:
            try:
                await self._settle(item.call)
            except Exception as exc:  # one failure must not strand the other leases
                self._lease_work_failed(item, exc)

    def _schedule_lease_timer(self) -> None:
        """Hand leases back on time even when no call comes (an idle process must not keep
        budget or usage to itself): a loop timer while any lease is open."""
        if self._lease_timer is not None or self.leases is None:
            return
        period = min(1.0, max(0.01, self.leases.config.seconds / 2))

        def tick() -> None:
            self._lease_timer = None
            if self.leases is None or self._closing:
                return
            self._return_leases(scan=True)
            if self.leases.open_leases:
                self._schedule_lease_timer()

        self._lease_timer = asyncio.get_running_loop().call_later(period, tick)

    async def return_leases(self) -> None:
        """See :meth:`BudgetLimiter.return_leases`."""
        self._return_leases(force=True)
        if self._lease_returns:
            await asyncio.gather(*list(self._lease_returns), return_exceptions=True)
        if self.pending_local:
            with contextlib.suppress(*UNAVAILABLE):
                await self.flush_local()

    async def commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """See :meth:`BudgetLimiter.commit`."""
        if isinstance(reservation, Reservation) and reservation.local:
            return self._local_commit(reservation, actual)
        if isinstance(reservation, Reservation) and reservation.lease:
            result = self._lease_settle(reservation, actual)
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
        """Hand every lease back, then close the connection pool."""
        try:
            if self.leases is not None:
                self._closing = True
                if self._lease_timer is not None:
                    self._lease_timer.cancel()
                    self._lease_timer = None
                await self.return_leases()
        finally:
            await self.redis.aclose()

    async def __aenter__(self) -> AsyncBudgetLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
