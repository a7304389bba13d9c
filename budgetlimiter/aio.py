"""The asyncio client: drives the same engine flows as :class:`~budgetlimiter.BudgetLimiter`,
its script calls coalesced into batches across tasks (:mod:`budgetlimiter.coalesce`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .backends import connect_async
from .coalesce import Coalescer, send_pipeline
from .engine import calls as rq
from .engine.engine import Clock, live_scopes
from .engine.leases import LeaseConfig
from .forecast.flow import History, ScopeForecast, forecast_flow
from .guard import AsyncGuard, Extractor, OnCommit
from .policy import Policy
from .results import Decision, LimitStatus, Reservation, SettleResult
from .streaming import guarded_astream
from .subject import Scope, Subject
from .surface import UNSET, ClientSurface
from .usage import Usage

T = TypeVar("T")
log = logging.getLogger("budgetlimiter")

#: asyncio socket timeouts also count the time the event loop is busy with other tasks, so
#: the async default is larger than the sync one (50 ms) to not mistake load for an outage
DEFAULT_ASYNC_TIMEOUT = 0.25


@dataclass(frozen=True, slots=True)
class _Pending:
    """A flow's first step asked for I/O (see :meth:`AsyncBudgetLimiter._start`)."""

    request: rq.Request


class AsyncBudgetLimiter(ClientSurface):
    """The asyncio client (same arguments and operations as
    :class:`~budgetlimiter.BudgetLimiter`, awaited).

    With ``coalesce`` (the default) concurrent calls from many tasks are sent in batches of
    at most ``max_batch`` calls, at most ``max_inflight`` batches on the wire at once, over
    one connection the client drives itself (:mod:`budgetlimiter.wire`; redis-py's
    pipelines for memory:// and Redis Cluster); see :mod:`budgetlimiter.coalesce`.
    ``pipeline_window`` (seconds, 0 = off) lets a call wait up to that long, while the
    process is busy, for others to share its write: fewer writes and reads per call for this
    process and for Redis, at the price of that wait (``serve --grpc-port`` uses 4 ms).
    """

    def __init__(self, policy: Policy | str | Path, redis: str | Any = "memory://", *,
                 prefix: str = "", clock: Clock | None = None,
                 timeout: float = DEFAULT_ASYNC_TIMEOUT, cluster: bool | None = None,
                 deny_cache_ttl: float | None = 5.0, leases: LeaseConfig | None = None,
                 outage_queue: bool = True, max_clock_skew: float | None = UNSET,
                 coalesce: bool = True, max_batch: int = 128, max_inflight: int = 4,
                 pipeline_window: float = 0.0) -> None:
        super().__init__(policy, redis, connect_async, timeout=timeout, prefix=prefix, clock=clock,
                         cluster=cluster, deny_cache_ttl=deny_cache_ttl, leases=leases,
                         outage_queue=outage_queue, max_clock_skew=max_clock_skew)
        self.coalescer = Coalescer(self.redis, self._scripts, max_batch=max_batch,
                                   max_inflight=max_inflight,
                                   pipeline_window=pipeline_window) if coalesce else None
        #: exclusive flows running, by key (a second one with that key waits for the first)
        self._exclusive: dict[Hashable, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loading: dict[str, asyncio.Future[Any]] = {}
        #: detached flows by group, while they run (see rq.Drain)
        self._groups: dict[str, set[asyncio.Task[Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # the driver ------------------------------------------------------------------------
    async def run(self, flow: rq.Flow[T]) -> T:
        """Drive one engine flow to its end (see :meth:`BudgetLimiter.run`)."""
        first = self._start(flow)
        return await self._resume(flow, first.request) if isinstance(first, _Pending) else first

    def _start(self, flow: rq.Flow[T]) -> T | _Pending:
        """The flow's first step, without a coroutine: its first request, or its result when
        it needs no I/O at all (a leased check or commit, a cached refusal)."""
        try:
            return _Pending(flow.send(None))
        except StopIteration as stop:
            self._flow_ended()
            result: T = stop.value
            return result

    async def _resume(self, flow: rq.Flow[T], request: rq.Request) -> T:
        """Execute ``request`` and go on with the flow until it ends."""
        while True:
            reply: Any = None
            error: BaseException | None = None
            try:
                reply = await self._execute(request)
            except BaseException as exc:
                error = exc
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                self._flow_ended()
                result: T = stop.value
                return result

    def _flow_ended(self) -> None:
        if self._timer is None and not self._closing and self.engine.timer_period is not None:
            self._schedule_timer()

    async def _execute(self, request: rq.Request) -> Any:
        if isinstance(request, rq.ScriptCall):
            if self.coalescer is not None:
                return await self.coalescer.submit(request)
            return await self.redis.evalsha(self._scripts[request.script].sha,
                                            len(request.keys), *request.keys, *request.args)
        if isinstance(request, rq.Pipeline):
            return await send_pipeline(self.redis, self._scripts, request.calls)
        if isinstance(request, rq.Command):
            return await self.redis.execute_command(*request.args)
        if isinstance(request, rq.LoadScript):
            # after a SCRIPT FLUSH every waiting call gets NOSCRIPT at once: load once
            loading = self._loading.get(request.name)
            if loading is None:
                loading = asyncio.ensure_future(
                    self.redis.script_load(self._scripts[request.name].source))
                self._loading[request.name] = loading
                loading.add_done_callback(lambda _f: self._loading.pop(request.name, None))
            return await asyncio.shield(loading)
        if isinstance(request, rq.Detached):
            task = self._spawn(self.run(request.flow))
            if request.group:  # registered now, before anyone can ask to drain the group
                group = self._groups.setdefault(request.group, set())
                group.add(task)
                task.add_done_callback(group.discard)
            return await asyncio.shield(task) if request.wait else None
        if isinstance(request, rq.Drain):
            running = self._groups.get(request.group)
            if running:
                await asyncio.wait(set(running))
            return None
        if isinstance(request, rq.Exclusive):
            return await self._exclusively(request)
        raise TypeError(f"unknown request {request!r}")  # pragma: no cover

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run (the rest of) a flow in a task of its own: it ends even if the caller is
        cancelled."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %r", task.exception())

    async def _exclusively(self, request: rq.Exclusive) -> Any:
        # each waiter parks on a future of its own, woken when the holder ends (cheaper than
        # asyncio.wait when every task of a busy subject queues up behind a lease opening)
        while (waiters := self._exclusive.get(request.key)) is not None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            await waiter
        first = self._start(request.flow)  # often done at once: no task needed
        if not isinstance(first, _Pending):
            return first
        task = self._spawn(self._resume(request.flow, first.request))
        mine: list[asyncio.Future[None]] = []
        self._exclusive[request.key] = mine

        def release(_task: asyncio.Task[Any]) -> None:
            if self._exclusive.get(request.key) is mine:
                del self._exclusive[request.key]
            for waiter in mine:
                if not waiter.done():
                    waiter.set_result(None)

        task.add_done_callback(release)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            abandoned = request.abandoned
            if abandoned is not None:  # the flow goes on; give back what it gets for us
                task.add_done_callback(lambda t: t.cancelled() or t.exception() is not None
                                       or abandoned(t.result()))
            raise

    def _schedule_timer(self) -> None:
        """A loop timer runs the engine's maintenance (lease hand-backs, replay of what an
        outage queued) on time even when no call comes, while there is any."""
        period = self.engine.timer_period
        if period is None or self._closing:
            return

        def tick() -> None:
            self._timer = None
            if self._closing:
                return
            self._spawn(self.run(self.engine.maintenance()))
            self._schedule_timer()

        self._timer = asyncio.get_running_loop().call_later(period, tick)

    # configuration ---------------------------------------------------------------------
    # operations: the engine's flows, awaited --------------------------------------------
    async def check(self, subject: Subject, estimate: Usage | None = None, *,
                    reservation_id: str | None = None, ttl: float | None = None,
                    dry_run: bool = False) -> Decision:
        """See :meth:`BudgetLimiter.check`."""
        flow = self.engine.check(subject, estimate, reservation_id=reservation_id, ttl=ttl,
                                 dry_run=dry_run)
        first = self._start(flow)
        decision = await self._resume(flow, first.request) \
            if isinstance(first, _Pending) else first
        if decision.leased:
            # a leased answer never suspends: yield once so that a task checking in a loop
            # does not starve the others (and drain the lease alone)
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.engine.abandon_leased(decision)
                raise
        return decision

    async def check_batch(self, items: Iterable[tuple[Subject, Usage]], *,
                          ttl: float | None = None) -> list[Decision]:
        """See :meth:`BudgetLimiter.check_batch`."""
        return await self.run(self.engine.check_batch(items, ttl=ttl))

    async def commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """See :meth:`BudgetLimiter.commit`."""
        flow = self.engine.commit(reservation, actual)
        first = self._start(flow)
        return await self._resume(flow, first.request) if isinstance(first, _Pending) else first

    async def commit_by_id(self, org: str, reservation_id: str, actual: Usage, *,
                           subject: Subject | None = None) -> SettleResult:
        """See :meth:`BudgetLimiter.commit_by_id`."""
        return await self.run(self.engine.commit_by_id(org, reservation_id, actual,
                                                       subject=subject))

    async def release(self, reservation: Reservation | str, *,
                      org: str | None = None) -> SettleResult:
        """See :meth:`BudgetLimiter.release`."""
        return await self.run(self.engine.release(reservation, org=org))

    async def record(self, subject: Subject, actual: Usage, *,
                     request_id: str | None = None) -> SettleResult:
        """See :meth:`BudgetLimiter.record`."""
        return await self.run(self.engine.record(subject, actual, request_id=request_id))

    async def status(self, subject: Subject) -> tuple[LimitStatus, ...]:
        """See :meth:`BudgetLimiter.status`."""
        return await self.run(self.engine.status(subject))

    async def scope_status(self, scope: Scope | str) -> tuple[LimitStatus, ...]:
        """See :meth:`BudgetLimiter.scope_status`."""
        return await self.run(self.engine.scope_status(scope))

    async def forecast(self, scope: Scope | str,
                       history: History | None = None) -> ScopeForecast:
        """See :meth:`BudgetLimiter.forecast`."""
        return await self.run(forecast_flow(self.engine, self.samples, scope, history))

    async def live_scopes(self, org: str | None = None, *,
                          limit: int = 100_000) -> list[Scope]:
        """See :meth:`BudgetLimiter.live_scopes`."""
        found: list[Any] = []
        async for raw in self.redis.scan_iter(match=self.keys.counter_pattern(org),
                                              count=1000):
            found.append(raw)
            if len(found) >= limit:
                break
        return live_scopes(self.keys, self.policy, org, found)

    async def execute(self, call: rq.ScriptCall) -> Any:
        """See :meth:`BudgetLimiter.execute`."""
        return await self.run(self.engine.script(call))

    async def flush_local(self) -> int:
        """See :meth:`BudgetLimiter.flush_local`."""
        return await self.run(self.engine.replay())

    async def return_leases(self) -> int:
        """See :meth:`BudgetLimiter.return_leases`."""
        return await self.run(self.engine.return_leases())

    def guard(self, subject: Subject, estimate: Usage | None = None, *,
              extract: Extractor | None = None, ttl: float | None = None,
              on_commit: OnCommit | None = None) -> AsyncGuard:
        """``async with`` block or decorator of coroutine functions; see :class:`AsyncGuard`."""
        return AsyncGuard(self, subject, estimate or Usage(), extract=extract, ttl=ttl,
                          on_commit=on_commit)

    def guard_stream(self, subject: Subject, estimate: Usage, stream: Any,
                     **kwargs: Any) -> Any:
        """A guarded async stream; see :func:`budgetlimiter.streaming.guarded_astream`."""
        return guarded_astream(self, subject, estimate, stream, **kwargs)

    async def aclose(self) -> None:
        """Let background work end, hand every lease back and replay what an outage queued,
        then close the connection pool."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.return_leases()
        finally:
            if self.queued:
                log.error("closing while Redis is unavailable: %d queued operations are lost",
                          self.queued)
            # calls still on the wire (a pipeline of a cancelled caller, a script load) hold a
            # connection the pool cannot close under them: let them end first
            in_flight = [*self._tasks, *self._loading.values(),
                         *(self.coalescer.in_flight() if self.coalescer is not None else ())]
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            if self.coalescer is not None:
                self.coalescer.close()
            await self.redis.aclose()
            # a Sentinel-managed client: the connections to the sentinels are its own
            manager = getattr(getattr(self.redis, "connection_pool", None), "sentinel_manager",
                              None)
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()

    async def __aenter__(self) -> AsyncBudgetLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
