"""The synchronous client."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from .backends import DEFAULT_TIMEOUT, connect_sync
from .engine.calls import ScriptCall
from .engine.keys import DEFAULT_PREFIX
from .engine.leases import LeaseConfig
from .engine.scripts import is_noscript, run_sync
from .engine.shell import REJECTED, UNAVAILABLE, ClientBase, Clock, Deferred, log
from .errors import BackendRejected, BackendUnavailable
from .guard import Extractor, Guard, OnCommit
from .policy import Policy
from .results import Decision, LimitStatus, Reservation, SettleResult
from .subject import Scope, Subject
from .usage import Usage


class BudgetLimiter(ClientBase):
    """Check, reserve, commit and record usage against a policy, on Redis.

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    ``redis+cluster://``, ``memory://``) or an existing redis-py client.
    """

    def __init__(self, policy: Policy | str | Path, redis: str | Any = "memory://", *,
                 prefix: str = DEFAULT_PREFIX, clock: Clock | None = None,
                 timeout: float = DEFAULT_TIMEOUT, cluster: bool | None = None,
                 deny_cache_ttl: float | None = 5.0,
                 leases: LeaseConfig | None = None) -> None:
        super().__init__(policy, redis, connect_sync, timeout=timeout, cluster=cluster,
                         prefix=prefix, clock=clock, deny_cache_ttl=deny_cache_ttl,
                         leases=leases)
        self._lease_opening = threading.Lock()
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None

    # plumbing ------------------------------------------------------------------
    def _run(self, call: ScriptCall) -> Any:
        if not self.breaker.allow():
            raise BackendUnavailable("redis circuit open")
        try:
            reply = run_sync(self.redis, self.scripts[call.script], call.keys, call.args)
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

    def _settle(self, call: ScriptCall) -> SettleResult:
        reply = self._run(call)
        if self._dirty_follow_up(call, reply):
            self.redis.sadd(self.core.keys.dirty_orgs, call.org)
        result: SettleResult = call.parse(reply)
        return result

    def flush_local(self) -> int:
        """Replay commits and records kept in-process during an outage. Returns how many."""
        done = 0
        while self.pending_local:
            op = self.pending_local[0]
            if op.reservation is not None:
                self._settle(self.core.plan_commit(op.reservation, op.usage, self.clock()))
            else:
                assert op.subject is not None
                self._settle(self.core.plan_record(op.subject, op.usage, self.clock(),
                                                     op.request_id))
            self.pending_local.popleft()
            done += 1
        return done

    # API -------------------------------------------------------------------------
    def check(self, subject: Subject, estimate: Usage | None = None, *,
              reservation_id: str | None = None, ttl: float | None = None) -> Decision:
        """Check every limit of ``subject`` and reserve ``estimate`` on all of them, or on none.

        The returned :class:`Decision` carries a :class:`Reservation` when allowed; commit it
        with the actual usage or release it. Bad input raises before anything is sent.
        """
        if self.leases is not None:
            leased = self._check_leased(subject, estimate, reservation_id, ttl)
            if leased is not None:
                return leased
        call, est, now, cached = self._prepare_check(subject, estimate, reservation_id, ttl)
        if cached is not None:
            return cached
        try:
            reply = self._run(call)
        except UNAVAILABLE as exc:
            return self._unavailable_decision(call, subject, est, exc)
        if self.pending_local:
            self._try_flush_local()
        return self._decided(call, reply, now)

    def _check_leased(self, subject: Subject, estimate: Usage | None,
                      reservation_id: str | None, ttl: float | None) -> Decision | None:
        self._return_leases()
        decision, opening = self._lease_take(subject, estimate, reservation_id, ttl)
        if decision is not None:
            return decision
        # a lease that take() just retired gives its unused part back before Redis decides
        self._return_leases()
        if opening is None:
            return None
        assert self.leases is not None
        with self._lease_opening:  # one thread opens a subject's lease; the others reuse it
            decision = self.leases.take(subject, opening.amounts, self.clock())
            if decision is not None:
                return decision
            answer = self.check(subject, opening.slice, ttl=self.leases.config.ttl_seconds,
                                reservation_id=opening.lease_id)
            decision = self._lease_opened(opening, answer)
        self._start_lease_timer()
        return decision

    def _return_leases(self, *, force: bool = False, scan: bool = False) -> None:
        for work in self._lease_work(force=force, scan=scan):
            try:
                self._settle(work.call)
            except Exception as exc:  # one failure must not strand the other leases
                self._lease_work_failed(work, exc)

    def _start_lease_timer(self) -> None:
        """A daemon thread hands leases back on time even when no call comes (an idle
        process must not keep budget or usage to itself)."""
        if self._lease_thread is not None or self.leases is None:
            return
        period = min(1.0, max(0.01, self.leases.config.seconds / 2))
        stop = self._lease_stop

        def run() -> None:
            while not stop.wait(period):
                try:
                    self._return_leases(scan=True)
                except Exception:  # pragma: no cover - logged, the timer keeps going
                    log.exception("returning leases failed")

        self._lease_thread = threading.Thread(target=run, name="budgetlimiter-leases",
                                              daemon=True)
        self._lease_thread.start()

    def return_leases(self) -> None:
        """Send the usage of every lease to Redis and refund the unused slices now (also
        what an outage kept in-process, when Redis answers)."""
        self._return_leases(force=True)
        if self.pending_local:
            self._try_flush_local()

    def _try_flush_local(self) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            self.flush_local()

    def commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """Replace the reservation's estimate by ``actual``. Retrying is safe (idempotent)."""
        if isinstance(reservation, Reservation) and reservation.local:
            return self._local_commit(reservation, actual)
        if isinstance(reservation, Reservation) and reservation.lease:
            result = self._lease_settle(reservation, actual)
            self._return_leases()
            if result is not None:
                return result
            # the lease went back to Redis before this commit: count it there, once
            return self.record(reservation.subject, actual, request_id="lease-" + reservation.id)
        call = self.core.plan_commit(reservation, actual, self.clock())
        try:
            return self._settle(call)
        except UNAVAILABLE:
            return self._defer(Deferred(usage=actual, reservation=reservation))

    def release(self, reservation: Reservation | str, *, org: str | None = None) -> SettleResult:
        """Refund a reservation that will not be used. Retrying is safe."""
        prepared = self._prepare_release(reservation, org)
        if isinstance(prepared, SettleResult):
            return prepared
        call, rid = prepared
        try:
            return self._settle(call)
        except UNAVAILABLE:  # the reservation's TTL refunds it
            return SettleResult(status="local", id=rid)

    def record(self, subject: Subject, actual: Usage, *,
               request_id: str | None = None) -> SettleResult:
        """Count usage that had no reservation. Idempotent by ``request_id``."""
        rid = request_id if request_id is not None else uuid.uuid4().hex
        call = self.core.plan_record(subject, actual, self.clock(), rid)
        try:
            return self._settle(call)
        except UNAVAILABLE:
            return self._defer(Deferred(usage=actual, subject=subject, request_id=rid))

    def status(self, subject: Subject) -> tuple[LimitStatus, ...]:
        """Live used / reserved / limit of every limit that applies to ``subject``."""
        call = self.core.plan_status(subject, self.clock())
        decision: Decision = call.parse(self._run(call))
        return decision.limits

    def scope_status(self, scope: Scope | str) -> tuple[LimitStatus, ...]:
        """Live counters of the limits declared for one scope, e.g. ``"org:acme/team:eng"``."""
        target = scope if isinstance(scope, Scope) else Scope.parse(scope)
        call = self.core.plan_scope_status(target, self.clock())
        decision: Decision = call.parse(self._run(call))
        return decision.limits

    def check_batch(self, items: Iterable[tuple[Subject, Usage]], *,
                    ttl: float | None = None) -> list[Decision]:
        """Many independent checks in one pipelined round trip (each all-or-nothing)."""
        now = self.clock()
        calls = [self.core.plan_check(s, u, now, ttl_seconds=ttl) for s, u in items]
        if not calls:
            return []
        replies = self._pipeline(calls)
        return [self._decided(call, reply, now) for call, reply in zip(calls, replies,
                                                                      strict=True)]

    def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                script = self.scripts[call.script]
                pipe.execute_command("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            missing = {c.script for c, r in zip(calls, replies, strict=False) if is_noscript(r)}
            if not missing or attempt == 2:
                break
            for name in missing:
                self.redis.script_load(self.scripts[name].source)
        for reply in replies:
            if isinstance(reply, Exception):
                if is_noscript(reply):
                    raise NoScriptError(str(reply))
                raise reply
        return replies

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
        from .streaming import guarded_stream

        return guarded_stream(self, subject, estimate, stream, **kwargs)

    def close(self) -> None:
        """Hand every lease back, then close the connection pool."""
        try:
            if self.leases is not None:
                self._lease_stop.set()
                if self._lease_thread is not None:  # let a hand-back in flight finish
                    self._lease_thread.join(timeout=10)
                self.return_leases()
        finally:
            self.redis.close()

    def __enter__(self) -> BudgetLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
