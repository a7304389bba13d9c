"""The synchronous client: drives the engine's flows with blocking redis-py calls."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from .backends import DEFAULT_TIMEOUT, connect_sync
from .engine import calls as rq
from .engine.engine import Clock, live_scopes
from .engine.leases import LeaseConfig
from .forecast.flow import History, ScopeForecast, forecast_flow
from .guard import Extractor, Guard, OnCommit
from .policy import Policy
from .results import Decision, LimitStatus, Reservation, SettleResult
from .streaming import guarded_stream
from .subject import Scope, Subject
from .surface import UNSET, ClientSurface
from .usage import Usage

T = TypeVar("T")
log = logging.getLogger("budgetlimiter")


class BudgetLimiter(ClientSurface):
    """Check, reserve, commit and record usage against a policy, on Redis.

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    ``redis+cluster://``, ``memory://``) or an existing redis-py client. ``timeout`` bounds
    every Redis call (seconds). ``deny_cache_ttl``: how long exhausted budgets are answered
    in-process (None: off). ``leases``: see README "Leases". ``outage_queue``: keep commits
    and records in-process while Redis is unreachable and replay them when it answers (off:
    they raise :class:`~budgetlimiter.errors.BackendUnavailable`; for short-lived processes).
    ``clock``: epoch milliseconds (default: the system clock). ``max_clock_skew``: seconds the
    clock may be off Redis's before it is corrected to Redis's (default 1 s; None trusts the
    clock: the default when ``clock`` is given, for simulations and tests).
    """

    def __init__(self, policy: Policy | str | Path, redis: str | Any = "memory://", *,
                 prefix: str = "", clock: Clock | None = None,
                 timeout: float = DEFAULT_TIMEOUT, cluster: bool | None = None,
                 deny_cache_ttl: float | None = 5.0, leases: LeaseConfig | None = None,
                 outage_queue: bool = True, max_clock_skew: float | None = UNSET) -> None:
        super().__init__(policy, redis, connect_sync, timeout=timeout, prefix=prefix, clock=clock,
                         cluster=cluster, deny_cache_ttl=deny_cache_ttl, leases=leases,
                         outage_queue=outage_queue, max_clock_skew=max_clock_skew)
        self._exclusive = threading.Lock()  # one lease opens at a time per client
        self._timer_stop = threading.Event()
        self._timer: threading.Thread | None = None

    # the driver ----------------------------------------------------------------------
    def run(self, flow: rq.Flow[T]) -> T:
        """Drive one engine flow to its end: send what it yields, feed back each reply or
        throw in the error."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                if self._timer is None and self.engine.timer_period is not None:
                    self._start_timer()
                result: T = stop.value
                return result
            reply, error = None, None
            try:
                reply = self._execute(request)
            except BaseException as exc:
                error = exc

    def _execute(self, request: rq.Request) -> Any:
        if isinstance(request, rq.ScriptCall):
            return self.redis.evalsha(self._scripts[request.script].sha, len(request.keys),
                                      *request.keys, *request.args)
        if isinstance(request, rq.Pipeline):
            pipe = self.redis.pipeline(transaction=False)
            for call in request.calls:
                pipe.execute_command("EVALSHA", self._scripts[call.script].sha,
                                     len(call.keys), *call.keys, *call.args)
            return pipe.execute(raise_on_error=False)
        if isinstance(request, rq.Command):
            return self.redis.execute_command(*request.args)
        if isinstance(request, rq.LoadScript):
            return self.redis.script_load(self._scripts[request.name].source)
        if isinstance(request, rq.Detached):
            try:
                return self.run(request.flow)
            except Exception:
                if request.wait:
                    raise
                log.exception("background work failed")
                return None
        if isinstance(request, rq.Drain):  # detached flows ran to their end right away
            return None
        if isinstance(request, rq.Exclusive):
            with self._exclusive:
                return self.run(request.flow)
        raise TypeError(f"unknown request {request!r}")  # pragma: no cover

    def _start_timer(self) -> None:
        """A daemon thread runs the engine's maintenance (lease hand-backs, replay of what an
        outage queued) on time even when no call comes."""
        stop = self._timer_stop

        def tick() -> None:
            while not stop.wait(self.engine.timer_period or 1.0):
                try:
                    self.run(self.engine.maintenance())
                except Exception:  # pragma: no cover - logged, the timer keeps going
                    log.exception("budgetlimiter maintenance failed")

        self._timer = threading.Thread(target=tick, name="budgetlimiter-timer", daemon=True)
        self._timer.start()

    # configuration -------------------------------------------------------------------
    # operations (each one flow of the engine) ---------------------------------------
    def check(self, subject: Subject, estimate: Usage | None = None, *,
              reservation_id: str | None = None, ttl: float | None = None,
              dry_run: bool = False) -> Decision:
        """Check every limit of ``subject`` and reserve ``estimate`` on all of them, or on none.

        The returned :class:`Decision` carries a :class:`Reservation` when allowed; commit it
        with the actual usage or release it. ``dry_run`` decides the same way and writes
        nothing (no reservation). Bad input raises before anything is sent.
        """
        return self.run(self.engine.check(subject, estimate, reservation_id=reservation_id,
                                          ttl=ttl, dry_run=dry_run))

    def check_batch(self, items: Iterable[tuple[Subject, Usage]], *,
                    ttl: float | None = None) -> list[Decision]:
        """Many independent checks in one pipelined round trip (each all-or-nothing)."""
        return self.run(self.engine.check_batch(items, ttl=ttl))

    def commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """Replace the reservation's estimate by ``actual``. Retrying is safe (idempotent)."""
        return self.run(self.engine.commit(reservation, actual))

    def commit_by_id(self, org: str, reservation_id: str, actual: Usage, *,
                     subject: Subject | None = None) -> SettleResult:
        """Commit a reservation known only by its id. ``subject`` prices ``actual`` and lets
        a reservation Redis lost (or that expired) still count, once (status ``recorded``)."""
        return self.run(self.engine.commit_by_id(org, reservation_id, actual, subject=subject))

    def release(self, reservation: Reservation | str, *, org: str | None = None) -> SettleResult:
        """Refund a reservation that will not be used. Retrying is safe."""
        return self.run(self.engine.release(reservation, org=org))

    def record(self, subject: Subject, actual: Usage, *,
               request_id: str | None = None) -> SettleResult:
        """Count usage that had no reservation. Idempotent by ``request_id``."""
        return self.run(self.engine.record(subject, actual, request_id=request_id))

    def status(self, subject: Subject) -> tuple[LimitStatus, ...]:
        """Live used / reserved / limit of every limit that applies to ``subject``."""
        return self.run(self.engine.status(subject))

    def scope_status(self, scope: Scope | str) -> tuple[LimitStatus, ...]:
        """Live counters of the limits declared for one scope, e.g. ``"org:acme/team:eng"``."""
        return self.run(self.engine.scope_status(scope))

    def forecast(self, scope: Scope | str, history: History | None = None) -> ScopeForecast:
        """Live counters of ``scope`` (as :meth:`scope_status`) and where each budget is
        heading by its period's end (see README "Forecasts and monitoring"). Each call keeps
        the reading for the next one; ``history``: earlier readings, e.g.
        :func:`budgetlimiter.forecast.ledger.ledger_history` from the durable store."""
        return self.run(forecast_flow(self.engine, self.samples, scope, history))

    def live_scopes(self, org: str | None = None, *, limit: int = 100_000) -> list[Scope]:
        """Scopes with counters in Redis or declared in the policy, of ``org`` (of every org:
        None); at most ``limit`` counter keys are read (``status --tree``, the dashboard)."""
        scan = self.redis.scan_iter(match=self.keys.counter_pattern(org), count=1000)
        return live_scopes(self.keys, self.policy, org, itertools.islice(scan, limit))

    def execute(self, call: rq.ScriptCall) -> Any:
        """Run one planned script call (the durable side's: flush, ack, rebuild, adjust) with
        the client's connection, breaker and NOSCRIPT handling; returns its parsed reply."""
        return self.run(self.engine.script(call))

    def flush_local(self) -> int:
        """Replay what an outage kept in-process now (also done on the next successful call
        and by a timer). Returns how many operations reached Redis."""
        return self.run(self.engine.replay())

    def return_leases(self) -> int:
        """Send the usage of every lease to Redis and refund the unused slices now (also
        what an outage kept in-process, when Redis answers). Returns how many operations
        are still kept in-process, to be replayed later (0: Redis has all the usage)."""
        return self.run(self.engine.return_leases())

    def guard(self, subject: Subject, estimate: Usage | None = None, *,
              extract: Extractor | None = None, ttl: float | None = None,
              on_commit: OnCommit | None = None) -> Guard:
        """Check before, commit after, release on error: as ``with`` block or decorator.
        ``on_commit`` receives what was committed (a billing hook)."""
        return Guard(self, subject, estimate or Usage(), extract=extract, ttl=ttl,
                     on_commit=on_commit)

    def guard_stream(self, subject: Subject, estimate: Usage, stream: Any,
                     **kwargs: Any) -> Any:
        """A guarded stream of chunks; see :func:`budgetlimiter.streaming.guarded_stream`."""
        return guarded_stream(self, subject, estimate, stream, **kwargs)

    def close(self) -> None:
        """Hand every lease back and replay what an outage queued, then close the pool."""
        try:
            self._timer_stop.set()
            if self._timer is not None:  # let a hand-back in flight finish
                self._timer.join(timeout=10)
            self.return_leases()
        finally:
            if self.queued:  # Redis away at exit: say what is lost with the process
                log.error("closing while Redis is unavailable: %d queued operations are lost",
                          self.queued)
            self.redis.close()

    def __enter__(self) -> BudgetLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
