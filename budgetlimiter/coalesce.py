"""Auto-pipelining for the asyncio client.

Calls made by many tasks in the same event-loop turn are written to Redis as one batch; while
``max_inflight`` batches are on the wire, new calls wait and join the next one. At low load
a call goes out on the next loop iteration, alone (no timer, so no added latency). Each call
gets its own reply or its own exception.

A pipeline window (``pipeline_window`` seconds, off by default; ``serve --grpc-port`` 4 ms) also
gathers calls that arrive one per loop turn, as grpc.aio hands them over: while the process
is near saturation and calls overlap (:class:`Company`), a call waits until ``window``
after the previous write left, so that those arriving meanwhile share its write.

For a plain or Sentinel-managed ``redis.asyncio.Redis`` the batches go over one connection the
coalescer drives itself (:mod:`budgetlimiter.wire`: redis-py connects it, hiredis packs and
reads); otherwise (fakeredis, a cluster) over redis-py pipelines.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from .engine.calls import ScriptCall
from .engine.scripts import Registry
from .wire import Wire, WireUnsupported, can_take_over, open_wire


async def send_pipeline(redis: Any, scripts: Registry, calls: list[ScriptCall]) -> list[Any]:
    """Run calls as one non-transactional pipeline; error replies are returned in place (the
    engine loads missing scripts and sends those calls again)."""
    pipe = redis.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command("EVALSHA", scripts[call.script].sha, len(call.keys), *call.keys,
                             *call.args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


Waiting = tuple[ScriptCall, "asyncio.Future[Any]"]


def _fail(waiting: list[Waiting], exc: BaseException) -> None:
    """Every call of ``waiting`` learns ``exc`` (a connection error hits them all)."""
    for _, fut in waiting:
        if not fut.done():
            fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))


class Company:
    """Whether a call should wait for others to share its batch (the pipeline window).

    Waiting pays only when both hold: this process is near the end of its CPU — its CPU time
    over the wall time of the last ``period`` seconds, all threads (gRPC's poller too), at
    least ``on`` of one core, and idle again only below ``off`` (hysteresis: the window
    itself saves CPU, so the share falls once it is on) — and calls overlap: in the last
    period a call was submitted while others were queued or on the wire. Below saturation a
    wait only adds latency (measured: at 1,000 gRPC calls/s an 8 ms window gated at half a core
    raised the p50 from 1.7 to 7.8 ms); a lone caller that waits for each answer before its
    next call never overlaps, so it never waits for company that cannot come. Sampled at
    most once per period (one clock_gettime of the process CPU time); the period is short so
    that a burst of load is met within a few tens of milliseconds, and the thresholds high so
    that the noise of short samples below saturation rarely switches it on (at 1,500 gRPC
    calls/s, two thirds of this machine's capacity: 20-135 windows in 5 s). A program whose
    other threads burn CPU counts as busy too, even when its event loop is not the
    bottleneck: the window is off unless asked for, for that reason."""

    def __init__(self, period: float = 0.02, on: float = 0.9, off: float = 0.7,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.period, self.on, self.off = period, on, off
        self.busy = False
        self.overlap = False  #: a call overlapped others in this period
        self._overlapped = False  #: ... in the previous one
        self._read_cpu = cpu
        self._since = time.monotonic()
        self._cpu = cpu()

    def worth_waiting(self, now: float) -> bool:
        """Busy and overlapping (sampled again once ``period`` has passed)."""
        elapsed = now - self._since
        if elapsed >= self.period:
            cpu = self._read_cpu()
            share = (cpu - self._cpu) / elapsed
            self._since, self._cpu = now, cpu
            self.busy = share >= (self.off if self.busy else self.on)
            self._overlapped, self.overlap = self.overlap, False
        return self.busy and (self.overlap or self._overlapped)


class Coalescer:
    """Batches concurrent script calls: at most ``max_inflight`` batches of ``max_batch``
    calls on the wire, over the driven connection or redis-py pipelines."""

    def __init__(self, redis: Any, scripts: Registry, *, max_batch: int = 128,
                 max_inflight: int = 4, pipeline_window: float = 0.0) -> None:
        self.redis = redis
        self.scripts = scripts
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        if not 0 <= pipeline_window <= 1:
            raise ValueError(f"pipeline_window must be 0..1 seconds, got {pipeline_window!r}")
        self.window = pipeline_window
        self._last_sent = -math.inf  #: monotonic time the last batch went out
        #: the window's first look at the queue (a loop turn away), then its end, while it
        #: gathers
        self._timer: asyncio.Handle | None = None
        self.company = Company()
        self._queue: list[Waiting] = []
        self._inflight = 0  #: redis-py pipelines on the wire (the driven connection counts its own)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: counters for metrics: pipelines sent, calls carried, pipeline windows opened
        self.pipelines = 0
        self.calls = 0
        self.windows = 0
        #: the connection driven directly (None: not open yet, or redis-py's pipelines)
        self._wire: Wire | None = None
        self._use_wire = can_take_over(redis)
        self._connecting = False
        self._closed = False

    def submit(self, call: ScriptCall) -> asyncio.Future[Any]:
        """Queue ``call``; the future gets its reply (or its error)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(RedisConnectionError("the client is closed"))
            return fut
        queue = self._queue
        if self.window and (queue or self._on_wire()):
            self.company.overlap = True
        queue.append((call, fut))
        if self._timer is not None and len(queue) >= self.max_batch:
            self._timer.cancel()  # a full batch does not wait out the window
            self._timer = asyncio.get_running_loop().call_soon(self._drain, True)
            return fut
        self._schedule()
        return fut

    def _schedule(self, _answered: int = 0) -> None:
        """Drain on the next loop turn if calls wait and a batch may go out (also called
        when a batch is answered); with a window, not before ``window`` seconds after the
        last batch left, unless a full batch waits."""
        if (self._queue and not self._scheduled and not self._closed
                and self._on_wire() < self.max_inflight):
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self.window and len(self._queue) < self.max_batch:
                now = time.monotonic()
                wait = self._last_sent + self.window - now
                if wait > 0 and self.company.worth_waiting(now):
                    self.windows += 1
                    self._timer = loop.call_soon(self._first_look, now + wait)
                    return
            loop.call_soon(self._drain)

    def _first_look(self, until: float) -> None:
        """The loop turn after a window opened: if the turn that brought the first call
        brought others too, send now — calls then come in bursts (an HTTP server reading many
        requests at once, many tasks of one program), each burst already shares a write, and
        waiting for the next would only add latency. gRPC hands calls over one per turn:
        those wait for the window's end (a timer: the loop sleeps meanwhile, so the wait
        costs no CPU that would make the process look busier than it is)."""
        wait = until - time.monotonic()
        if wait <= 0 or len(self._queue) > 1:
            self._drain(gathered=True)
            return
        self._timer = asyncio.get_running_loop().call_later(wait, self._drain, True)

    def _on_wire(self) -> int:
        wire = self._wire
        return wire.busy if self._use_wire and wire is not None else self._inflight

    def _next_batch(self, gathered: bool = False) -> list[Waiting]:
        """What is waiting, spread over the free slots: Redis then runs one batch while this
        process reads the replies of another, instead of each waiting for the other with one
        big batch. After a pipeline window (``gathered``), all of it: the window gathered it
        to share one write."""
        free = 1 if gathered else self.max_inflight - self._on_wire()
        size = min(self.max_batch, -(-len(self._queue) // free))
        batch = self._queue[:size]
        del self._queue[:size]
        self.pipelines += 1
        self.calls += size
        return batch

    def _drain(self, gathered: bool = False) -> None:
        self._scheduled = False
        self._timer = None
        if not self._queue or self._closed:  # (failed meanwhile: nothing to send)
            return
        if self._use_wire:
            self._drain_to_wire(gathered)
            return
        while self._queue and self._inflight < self.max_inflight:
            batch = self._next_batch(gathered)
            self._inflight += 1
            self._last_sent = time.monotonic()
            self._track(asyncio.get_running_loop().create_task(self._send(batch)))

    async def _send(self, batch: list[Waiting]) -> None:
        try:
            replies = await send_pipeline(self.redis, self.scripts, [c for c, _ in batch])
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, fut), reply in zip(batch, replies, strict=False):
                if fut.done():
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        finally:
            self._inflight -= 1
            self._schedule()

    # the connection driven directly ---------------------------------------------------
    def _drain_to_wire(self, gathered: bool = False) -> None:
        wire = self._wire
        if wire is None or wire.closed is not None:
            if not self._connecting:
                self._connecting = True
                self._track(asyncio.get_running_loop().create_task(self._connect()))
            return
        while self._queue and wire.busy < self.max_inflight:
            packed, futures = self._pack(self._next_batch(gathered))
            if futures:
                wire.write(packed, futures)
                self._last_sent = time.monotonic()

    def _pack(self, batch: list[Waiting]) -> tuple[list[bytes], list[asyncio.Future[Any]]]:
        """The RESP bytes of each call; a call that cannot be packed (an argument of no
        Redis type) fails alone, as redis-py's pipeline would fail it, instead of hanging."""
        # (hiredis's stubs type the argument as a 1-tuple; it takes any number of arguments)
        scripts, pack = self.scripts, cast(Any, hiredis.pack_command)
        packed: list[bytes] = []
        futures: list[asyncio.Future[Any]] = []
        for call, fut in batch:
            try:
                packed.append(pack(("EVALSHA", scripts[call.script].sha, len(call.keys),
                                    *call.keys, *call.args)))
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(DataError(f"cannot send {call.script}: {exc}"))
                continue
            futures.append(fut)
        return packed, futures

    async def _connect(self) -> None:
        try:
            wire = await open_wire(self.redis)
        except WireUnsupported:  # keep redis-py's pipelines from now on
            self._use_wire = False
        except BaseException as exc:  # Redis unreachable: every waiting call learns it
            queue, self._queue = self._queue, []
            _fail(queue, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            wire.on_batch_done = self._schedule
            self._wire = wire
        finally:
            self._connecting = False
            self._schedule()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """The pipelines (or calls on the driven connection) not answered yet, and the calls
        still gathering in a pipeline window."""
        wire = self._wire
        return [*self._tasks, *(wire.pending if wire is not None else ()),
                *(fut for _, fut in self._queue)]

    def close(self) -> None:
        """Close the driven connection: calls still on it, or still waiting to be sent, fail
        with ``ConnectionError``, and so does every later call (none opens a connection
        again)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._scheduled = False
        queue, self._queue = self._queue, []
        _fail(queue, RedisConnectionError("the client is closed"))
        if self._wire is not None:
            self._wire.close()
            self._wire = None
