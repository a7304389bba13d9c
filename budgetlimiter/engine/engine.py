"""The engine: every operation of a client as one flow (see :mod:`.calls`), and no I/O.

:class:`Engine` owns everything a client decides: planning, the circuit breaker, the deny
cache, leases, the outage queue and its replay, the clock and its offset from Redis's. The
sync :class:`~budgetlimiter.client.BudgetLimiter` and the asyncio
:class:`~budgetlimiter.aio.AsyncBudgetLimiter` only execute what its flows yield.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import (
    BackendUnavailable,
    InvalidInput,
    ReservationNotFound,
    ReservationSettled,
)
from ..policy import OutagePolicy, Policy, load_policy
from ..results import Decision, LimitStatus, Reservation, SettleResult
from ..subject import Scope, Subject
from ..usage import Amounts, Usage, usd_to_micros
from . import lease_ops, transport
from .breaker import CircuitBreaker
from .calls import Command, Detached, Drain, Exclusive, Flow, ScriptCall
from .denycache import DenyCache
from .keys import DEFAULT_PREFIX, KeySpace
from .leases import LeaseConfig, LeaseTable
from .outage import UNAVAILABLE, Deferred, OutageQueue
from .override_watch import POLL_SECONDS, OverrideWatch
from .planner import Core
from .settle_plan import SettlePlanner, dirty_follow_up
from .transport import Clock as Clock  # re-exported: the clients and the server name it
from .transport import Transport, same_call, skewed

log = logging.getLogger("budgetlimiter")

#: how far a client's clock may be from Redis's before it is corrected (seconds)
DEFAULT_CLOCK_TOLERANCE = 1.0


def as_policy(policy: Policy | str | Path) -> Policy:
    return policy if isinstance(policy, Policy) else load_policy(Path(policy))


@dataclass(frozen=True, slots=True)
class Planners:
    """The planners of one policy, swapped as one object: a request sees the old policy or
    the new one, never a mix."""

    core: Core
    settle: SettlePlanner


#: the group of detached lease hand-backs (see :class:`~.calls.Drain`)
HAND_BACKS = "lease hand-backs"


def live_scopes(keys: KeySpace, policy: Policy, org: str | None,
                counter_keys: Iterable[bytes | str]) -> list[Scope]:
    """Scopes with counters (``counter_keys``, as a SCAN of :meth:`KeySpace.counter_pattern`
    found them) or declared in the policy, of ``org`` (every org: None), sorted."""
    found: set[Scope] = set()
    for raw in counter_keys:
        try:
            found.add(keys.parse_counter(raw.decode() if isinstance(raw, bytes) else raw).scope)
        except ValueError:
            continue
    found.update(s for s in policy.declared_scopes() if org is None or s.org == org)
    return sorted(found, key=lambda s: (s.org, s.team or "", s.user or "", s.agent or ""))


class Engine:
    """The operations of one client as flows. See the clients for the meaning of the options;
    ``clock_tolerance`` is seconds, or None to trust ``clock`` (simulations, tests)."""

    def __init__(self, policy: Policy | str | Path, *, cluster: bool, prefix: str = "",
                 clock: Clock | None = None, deny_cache_ttl: float | None = 5.0,
                 leases: LeaseConfig | None = None, outage_queue: bool = True,
                 clock_tolerance: float | None = DEFAULT_CLOCK_TOLERANCE) -> None:
        self.keys = KeySpace(prefix or DEFAULT_PREFIX)
        self.cluster = cluster
        # whole milliseconds on the wire: below 1 ms it would become 0, which no clock meets
        if clock_tolerance is not None and not 0.001 <= clock_tolerance <= 3600:
            raise ValueError(f"max_clock_skew (the clock tolerance) must be in [0.001, 3600] "
                             f"seconds, got {clock_tolerance!r}")
        self._tolerance_ms = -1 if clock_tolerance is None else int(clock_tolerance * 1000)
        self._sweep_sampler: Callable[[], bool] | None = None
        #: sends requests through the circuit breaker; keeps the clock and its offset
        self.io = Transport(clock or transport.system_clock_ms)
        self.io.tolerance_ms = self._tolerance_ms
        self.planners = self._planners(as_policy(policy))
        #: exhausted budgets answered in-process (None: off); see :mod:`.denycache`
        self.deny_cache = DenyCache(deny_cache_ttl) if deny_cache_ttl else None
        #: usage kept while Redis was unreachable (None: fail those calls instead)
        self.queue = OutageQueue() if outage_queue else None
        #: the runtime overrides published in Redis, followed by the timer (see
        #: :mod:`.override_watch`); the clients turn it on, a bare engine (tests) has it off
        self.watch = OverrideWatch(enabled=False)
        pol = self.planners.core.policy
        self.leases = LeaseTable(leases, hold_ms=pol.reservation_ttl_seconds * 1000,
                                 remember_ms=pol.idempotency_seconds * 1000) \
            if leases is not None else None

    # policy and clock ------------------------------------------------------------
    def _planners(self, policy: Policy) -> Planners:
        core = Core(policy, self.keys, cluster=self.cluster,
                    clock_tolerance_ms=self._tolerance_ms)
        core.sweep_sampler = self._sweep_sampler
        return Planners(core, SettlePlanner(core))

    @property
    def sweep_sampler(self) -> Callable[[], bool] | None:
        """Test hook: called once per check to say whether ``check.lua`` runs its sampled
        expiry sweep (``lambda: True`` / ``lambda: False`` force one path). None, the
        default, samples about one check in eight from the random reservation id and the
        clock. Kept across policy changes."""
        return self._sweep_sampler

    @sweep_sampler.setter
    def sweep_sampler(self, sampler: Callable[[], bool] | None) -> None:
        self._sweep_sampler = sampler
        self.planners.core.sweep_sampler = sampler

    @property
    def policy(self) -> Policy:
        return self.planners.core.policy

    @property
    def breaker(self) -> CircuitBreaker:
        return self.io.breaker

    @property
    def clock_offset_ms(self) -> int:
        """What is added to the clock to get Redis's time (learnt when a script says the
        clock is off)."""
        return self.io.clock_offset_ms

    def now(self) -> int:
        """The time decisions are planned with (see :meth:`Transport.now`)."""
        return self.io.now()

    def set_policy(self, policy: Policy | str | Path) -> None:
        """Swap the policy atomically; cached denials and open leases of the old one end.
        A policy without overrides (a reloaded file) keeps the runtime overrides in force."""
        new = as_policy(policy)
        current = self.planners.core.policy.overrides
        if new.overrides is None and current is not None:
            new = new.with_overrides(current)
        self.planners = self._planners(new)
        if self.deny_cache is not None:
            self.deny_cache.clear()
        if self.leases is not None:
            self.leases.hold_ms = new.reservation_ttl_seconds * 1000
            self.leases.remember_ms = new.idempotency_seconds * 1000
            self.leases.retire_all(self.now())

    def apply_overrides(self, overrides: Any) -> None:
        """Swap in the policy file with ``overrides`` (an
        :class:`~budgetlimiter.policy.overrides.OverrideSet`), atomically, unless a newer
        version is already applied."""
        if overrides.version < self.watch.applied:
            return
        self.watch.applied = overrides.version
        self.set_policy(self.policy.file_policy().with_overrides(overrides))

    def poll_overrides(self) -> Flow[None]:
        """Apply the overrides published in Redis if they are newer (one ``GET``)."""
        yield from self.watch.poll(self.keys, self.apply_overrides)

    def script(self, call: ScriptCall) -> Flow[Any]:
        """One planned call of the durable side's scripts (flush, ack, rebuild, adjust): its
        reply as ``call.parse`` reads it."""
        reply = yield from self.io.script(call)
        return call.parse(reply)

    # checks ------------------------------------------------------------------------------
    def check(self, subject: Subject, estimate: Usage | None = None, *,
              reservation_id: str | None = None, ttl: float | None = None,
              dry_run: bool = False) -> Flow[Decision]:
        """Check every limit of ``subject`` and reserve ``estimate`` on all or none
        (``dry_run``: decide the same way and write nothing)."""
        # returns the flow rather than being one: a level of ``yield from`` less per call
        if self.leases is not None and not dry_run:
            return self._check_maybe_leased(subject, estimate, reservation_id, ttl)
        return self._check_redis(subject, estimate, reservation_id, ttl, dry_run)

    def _check_maybe_leased(self, subject: Subject, estimate: Usage | None,
                            reservation_id: str | None, ttl: float | None) -> Flow[Decision]:
        leased = yield from self._check_leased(subject, estimate, reservation_id, ttl)
        if leased is not None:
            return leased
        return (yield from self._check_redis(subject, estimate, reservation_id, ttl, False))

    def _check_redis(self, subject: Subject, estimate: Usage | None,
                     reservation_id: str | None, ttl: float | None,
                     dry_run: bool) -> Flow[Decision]:
        if self.watch.pending:  # a client's first check applies the overrides in force
            yield from self.poll_overrides()
        est = estimate if estimate is not None else Usage()
        core = self.planners.core
        now = self.now()
        call = core.plan_check(subject, est, now, reservation_id=reservation_id,
                               ttl_seconds=ttl, dry_run=dry_run)
        if self.deny_cache is not None and not dry_run:
            cached = self.deny_cache.lookup(call, subject, now)
            if cached is not None:
                return cached
        try:
            reply = yield from self.io.send(call)
            if skewed(reply):  # (the replanning closure is built on this rare path only)
                call, reply = yield from self.io.corrected(reply, lambda t: core.plan_check(
                    subject, est, t, reservation_id=reservation_id, ttl_seconds=ttl,
                    dry_run=dry_run), now)
        except UNAVAILABLE as exc:
            return self._outage_decision(call, subject, est, dry_run, exc)
        if self.queue:  # Redis answered: replay what an outage left (apart from this call)
            yield Detached(self.replay())
        return self._decided(call, reply)

    def _decided(self, call: ScriptCall, reply: Any) -> Decision:
        decision: Decision = call.parse(reply)
        if not decision.allowed and self.deny_cache is not None:
            self.deny_cache.remember(call, decision, self.now())
        return decision

    def _outage_decision(self, call: ScriptCall, subject: Subject, estimate: Usage,
                         dry_run: bool, exc: BaseException) -> Decision:
        log.warning("redis unavailable during check of %s: %s", subject, exc)
        if self.policy.outage is not OutagePolicy.FAIL_OPEN:
            return Decision(allowed=False, subject=subject, reservation=None, limits=(),
                            reason="backend_unavailable", degraded=True)
        reservation = None
        if not dry_run:
            now = self.now()
            reservation = Reservation(id=call.reservation_id, subject=subject,
                                      estimate=self.planners.core.amounts(subject, estimate),
                                      created_ms=now, expires_ms=now, local=True)
        return Decision(allowed=True, subject=subject, reservation=reservation, limits=(),
                        reason="backend_unavailable", degraded=True)

    def check_batch(self, items: Iterable[tuple[Subject, Usage]], *,
                    ttl: float | None = None) -> Flow[list[Decision]]:
        """Many independent checks in one pipelined round trip (each all-or-nothing)."""
        if self.watch.pending:
            yield from self.poll_overrides()
        core = self.planners.core
        now = self.now()
        pairs = list(items)
        calls = [core.plan_check(s, u, now, ttl_seconds=ttl) for s, u in pairs]
        if not calls:
            return []
        replies = yield from self.io.pipeline(calls)
        off = [i for i, r in enumerate(replies) if skewed(r)]
        if off:
            self.io.judge(replies[off[0]], now)
            now = self.now()
            for i in off:
                calls[i] = core.plan_check(pairs[i][0], pairs[i][1], now, ttl_seconds=ttl)
            again = yield from self.io.pipeline([calls[i] for i in off])
            for i, reply in zip(off, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if self.queue:  # Redis answered: replay what an outage left (apart from this call)
            yield Detached(self.replay())
        return [self._decided(c, r) for c, r in zip(calls, replies, strict=True)]

    def status(self, subject: Subject) -> Flow[tuple[LimitStatus, ...]]:
        """Live used / reserved / limit of every limit that applies to ``subject``."""
        core = self.planners.core
        call = core.plan_status(subject, self.now())
        call, reply = yield from self.io.run(call, lambda t: core.plan_status(subject, t))
        decision: Decision = call.parse(reply)
        return decision.limits

    def scope_status(self, scope: Scope | str) -> Flow[tuple[LimitStatus, ...]]:
        """Live counters of the limits declared for one scope."""
        target = scope if isinstance(scope, Scope) else Scope.parse(scope)
        if self.watch.pending:  # a new client shows the limits in force, overrides included
            yield from self.poll_overrides()
        core = self.planners.core
        call = core.plan_scope_status(target, self.now())
        call, reply = yield from self.io.run(call, lambda t: core.plan_scope_status(target, t))
        decision: Decision = call.parse(reply)
        return decision.limits

    # leases ----------------------------------------------------------------------------
    def _check_leased(self, subject: Subject, estimate: Usage | None,
                      reservation_id: str | None, ttl: float | None) -> Flow[Decision | None]:
        table = self.leases
        assert table is not None
        now = self.now()
        work = lease_ops.work(table, self.planners.settle, now)
        if work:  # (not a sub-flow: most leased checks have nothing to hand back)
            yield Detached(self._send_lease_work(work), group=HAND_BACKS)
        decision, opening = lease_ops.take(table, self.planners.core, subject, estimate,
                                           reservation_id, ttl, now)
        if decision is not None:
            return decision
        if opening is None:
            # a lease that take() just retired gives its unused part back before Redis decides
            yield from self._hand_back(wait=True)
            return None
        # the checks that find no lease queue up here, and all but the first find the lease
        # it opened: only the one that goes to Redis waits for the hand-backs (in the flow)
        leased: Decision | None = yield Exclusive(("lease", subject), self._open_lease(opening),
                                                  self.abandon_leased)
        return leased

    def _open_lease(self, opening: lease_ops.Opening) -> Flow[Decision | None]:
        table = self.leases
        assert table is not None
        # another caller may have opened this subject's lease meanwhile
        decision = table.take(opening.subject, opening.amounts, self.now())
        if decision is not None:
            return decision
        yield from self._hand_back(wait=True)  # Redis must have every returned slice first
        answer = yield from self._check_redis(opening.subject, opening.slice,
                                              opening.lease_id, table.config.ttl_seconds,
                                              False)
        return lease_ops.opened(table, opening, answer)

    def abandon_leased(self, decision: Decision | None) -> None:
        """The caller that opened a lease went away: its leased call will never happen."""
        if decision is not None and decision.reservation is not None and self.leases:
            lease_ops.settle(self.leases, self.planners.core, decision.reservation, None)

    def _hand_back(self, *, wait: bool, force: bool = False, scan: bool = False) -> Flow[None]:
        """Send due lease hand-backs, in a flow of their own (never lost with a cancelled
        caller). ``wait``: the caller waits for them, and for any hand-back still on its way,
        so that Redis has every returned slice before the caller's next call."""
        if self.leases is None:
            return
        work = lease_ops.work(self.leases, self.planners.settle, self.now(), force=force,
                              scan=scan)
        if work:
            yield Detached(self._send_lease_work(work), wait=wait, group=HAND_BACKS)
        if wait:
            yield Drain(HAND_BACKS)

    def _send_lease_work(self, work: list[lease_ops.LeaseWork]) -> Flow[None]:
        assert self.leases is not None
        for item in work:
            try:
                yield from self._settle(item.call, same_call(item.call), replay=False)
            except Exception as exc:  # one failure must not strand the other leases
                if lease_ops.work_failed(self.leases, item, exc, isinstance(exc, UNAVAILABLE)):
                    self._defer(Deferred("commit", item.lease.spent_usage(),
                                         reservation=item.lease.reservation), force=True)

    def return_leases(self) -> Flow[int]:
        """Hand every lease back now, then replay what an outage queued. Returns how many
        operations are still kept in-process (0: Redis has all the usage): a hand-back that
        found Redis unreachable, its circuit open or another replay under way is queued,
        never dropped, and the caller learns it here."""
        yield from self._hand_back(wait=True, force=True)
        if self.queue:
            yield from self.replay()
        return self.queued

    def maintenance(self) -> Flow[None]:
        """What a client's timer runs: due lease hand-backs, and the outage queue's replay
        (so queued usage reaches Redis even when no call comes)."""
        yield from self._hand_back(wait=True, scan=True)
        if self.queue:
            yield from self.replay()
        if self.watch.due():
            yield from self.poll_overrides()

    @property
    def timer_period(self) -> float | None:
        """How often a client's timer should run :meth:`maintenance` (None: not needed)."""
        periods = [POLL_SECONDS] if self.watch.enabled else []
        if self.leases is not None and self.leases.open_leases:
            periods.append(min(1.0, max(0.01, self.leases.config.seconds / 2)))
        if self.queue:
            periods.append(1.0)
        return min(periods) if periods else None

    # settling -------------------------------------------------------------------------
    def _settle(self, call: ScriptCall, replan: Callable[[int], ScriptCall], *,
                replay: bool = True) -> Flow[SettleResult]:
        call, reply = yield from self.io.run(call, replan)
        if dirty_follow_up(call, reply, self.cluster):
            try:
                yield from self.io.send(Command(("SADD", self.keys.dirty_orgs, call.org)))
            except UNAVAILABLE:  # the reconciler's periodic scan finds the org anyway
                log.warning("could not mark org %r dirty; the reconciler's scan will", call.org)
        if replay and self.queue:  # Redis answered: replay what an outage left queued
            yield Detached(self.replay())
        result: SettleResult = call.parse(reply)
        return result

    def commit(self, reservation: Reservation, actual: Usage) -> Flow[SettleResult]:
        """Replace the reservation's estimate by ``actual`` (idempotent by its id)."""
        if isinstance(reservation, Reservation) and reservation.local:
            # admitted without Redis (fail_open): counted as a record when Redis is back
            return self._defer(Deferred("record", actual, subject=reservation.subject,
                                        id="local-" + reservation.id))
        if isinstance(reservation, Reservation) and reservation.lease:
            assert self.leases is not None
            result = lease_ops.settle(self.leases, self.planners.core, reservation, actual)
            yield from self._hand_back(wait=False)
            if result is not None:
                return result
            # the lease went back to Redis before this commit: count it there, once
            return (yield from self.record(reservation.subject, actual,
                                           request_id="lease-" + reservation.id))
        settle = self.planners.settle
        call = settle.plan_commit(reservation, actual, self.now())
        try:
            return (yield from self._settle(
                call, lambda t: settle.plan_commit(reservation, actual, t)))
        except UNAVAILABLE:
            return self._defer(Deferred("commit", actual, reservation=reservation))

    def commit_by_id(self, org: str, reservation_id: str, actual: Usage, *,
                     subject: Subject | None = None) -> Flow[SettleResult]:
        """Commit a reservation known only by its id. With ``subject`` (which also prices
        ``actual``), a reservation Redis no longer knows is still counted, exactly once
        (status ``recorded``); without, ``actual.cost`` must be given."""
        p = self.planners
        if not isinstance(actual, Usage):
            raise InvalidInput(f"usage must be a budgetlimiter.Usage, got "
                               f"{type(actual).__name__}")
        leased = self.leases.find(org, reservation_id) if self.leases is not None else None
        if leased == "settled":
            return SettleResult(status="duplicate", id=reservation_id)
        if isinstance(leased, Reservation):
            return (yield from self.commit(leased, actual))
        if subject is not None:
            amounts = p.core.amounts(subject, actual)
        elif actual.cost is not None:
            amounts = Amounts(invocations=actual.invocations, input_tokens=actual.input_tokens,
                              output_tokens=actual.output_tokens,
                              total_tokens=actual.total_tokens,
                              cost=usd_to_micros("cost", actual.cost))
        else:
            raise InvalidInput("a commit by id needs subject (to price actual with the "
                               "agent's pricing) or actual.cost")
        call = p.settle.plan_commit_by_id(org, reservation_id, amounts, self.now(), subject)
        return (yield from self._settle(call, lambda t: p.settle.plan_commit_by_id(
            org, reservation_id, amounts, t, subject)))

    def release(self, reservation: Reservation | str, *,
                org: str | None = None) -> Flow[SettleResult]:
        """Refund a reservation that will not be used (idempotent)."""
        if isinstance(reservation, Reservation):
            if reservation.local:
                return SettleResult(status="released", id=reservation.id)
            if reservation.lease:
                assert self.leases is not None
                released = lease_ops.settle(self.leases, self.planners.core, reservation, None)
                yield from self._hand_back(wait=False)
                # None: the lease went back already, and Redis refunded the estimate then
                return released or SettleResult(status="released", id=reservation.id)
            org, rid = reservation.subject.org, reservation.id
        elif org is None:
            raise TypeError("release by id needs org=")
        else:
            leased = self.leases.find(org, reservation) if self.leases is not None else None
            if leased == "settled":
                return SettleResult(status="duplicate", id=reservation)
            if isinstance(leased, Reservation):
                return (yield from self.release(leased))
            rid = reservation
        settle = self.planners.settle
        call = settle.plan_release(org, rid, self.now())
        try:
            return (yield from self._settle(call, lambda t: settle.plan_release(org, rid, t)))
        except UNAVAILABLE:
            return self._defer(Deferred("release", org=org, id=rid))

    def record(self, subject: Subject, actual: Usage, *,
               request_id: str | None = None) -> Flow[SettleResult]:
        """Count usage that had no reservation (idempotent by ``request_id``)."""
        rid = request_id if request_id is not None else uuid.uuid4().hex
        settle = self.planners.settle
        call = settle.plan_record(subject, actual, self.now(), rid)
        try:
            return (yield from self._settle(
                call, lambda t: settle.plan_record(subject, actual, t, rid)))
        except UNAVAILABLE:
            return self._defer(Deferred("record", actual, subject=subject, id=rid))

    # the outage queue ------------------------------------------------------------------
    def _defer(self, op: Deferred, *, force: bool = False) -> SettleResult:
        """Keep ``op`` for replay, or (outage queue off) say that nothing was stored."""
        if self.queue is None:
            if not force:
                raise BackendUnavailable(f"redis unavailable: this {op.kind} was not stored "
                                         "and nothing was counted")
            log.error("redis unavailable: usage of lease %s lost (outage queue off)",
                      op.reservation.id if op.reservation else op.id)
            return SettleResult(status="local", id=op.id)
        amounts = None
        if op.usage is not None:
            subject = op.reservation.subject if op.reservation is not None else op.subject
            assert subject is not None
            amounts = self.planners.core.amounts(subject, op.usage)
        return self.queue.push(op, amounts)

    def _replay_call(self, op: Deferred, now: int) -> ScriptCall:
        settle = self.planners.settle
        if op.kind == "commit":
            assert op.reservation is not None and op.usage is not None
            return settle.plan_commit(op.reservation, op.usage, now)
        if op.kind == "release":
            return settle.plan_release(op.org, op.id, now)
        assert op.subject is not None and op.usage is not None
        return settle.plan_record(op.subject, op.usage, now, op.id)

    def replay(self) -> Flow[int]:
        """Replay what an outage queued, in order, until the queue is empty or Redis fails
        again; one replayer at a time (others return 0 at once). Returns how many."""
        queue = self.queue
        if queue is None or not queue.replaying.acquire(blocking=False):
            return 0
        done = 0
        try:
            while (op := queue.head()) is not None:
                try:
                    yield from self._settle(self._replay_call(op, self.now()),
                                            partial(self._replay_call, op), replay=False)
                except UNAVAILABLE:
                    return done
                except (ReservationNotFound, ReservationSettled, InvalidInput) as exc:
                    log.error("queued %s %s cannot be applied, dropped: %s", op.kind,
                              op.reservation.id if op.reservation else op.id, exc)
                except Exception:  # an error reply: keep it, try again on the next replay
                    log.exception("replaying queued %s failed; kept for the next replay",
                                  op.kind)
                    return done
                queue.done(op)
                done += 1
            return done
        finally:
            queue.replaying.release()

    @property
    def queued(self) -> int:
        """How many operations wait in the outage queue."""
        return len(self.queue) if self.queue is not None else 0
