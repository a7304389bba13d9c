"""The clients' side of leases (see :mod:`budgetlimiter.engine.leases`): when a check may be leased,
opening a lease, settling leased reservations, and the Redis calls that hand leases back.
A mixin of :class:`budgetlimiter.engine.shell.ClientBase`; no I/O here either."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import InvalidInput, ReservationNotFound
from ..results import Decision, Reservation, SettleResult
from ..subject import Subject
from ..usage import Amounts, Usage
from .calls import ScriptCall
from .leases import Lease, LeaseTable, Shrink

if TYPE_CHECKING:
    from .planner import Core
    from .shell import Clock, Deferred

log = logging.getLogger("budgetlimiter")


@dataclass(frozen=True, slots=True)
class Opening:
    """A lease about to be opened: the slice to check and what registering it needs."""

    subject: Subject
    amounts: Amounts
    slice: Usage
    now_ms: int
    generation: int
    until_ms: int
    guarded: tuple[int, ...]
    lease_id: str


@dataclass(frozen=True, slots=True)
class LeaseWork:
    """One Redis call handing (part of) a lease back."""

    lease: Lease
    call: ScriptCall
    shrink: Shrink | None = None  #: None: the final commit or release of the lease


class LeaseHelpers:
    """Lease handling shared by the sync and asyncio clients."""

    core: Core
    clock: Clock
    leases: LeaseTable | None

    def _defer(self, op: Deferred) -> SettleResult:
        raise NotImplementedError

    def _lease_take(self, subject: Subject, estimate: Usage | None, reservation_id: str | None,
                    ttl: float | None) -> tuple[Decision | None, Opening | None]:
        """A decision from the subject's lease, else the lease to open (None: check with
        Redis as usual). Only plain checks (no explicit id or TTL) of subjects without rate
        limits, under a non-strict policy, are leased."""
        table = self.leases
        assert table is not None
        if not isinstance(subject, Subject):
            raise InvalidInput(
                f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
        # one policy throughout: a reload meanwhile bumps the generation, and a lease opened
        # under an older one never admits
        generation = table.generation
        core = self.core
        now = self.clock()
        amounts = core.amounts(subject, estimate if estimate is not None else Usage())
        if reservation_id is not None or ttl is not None or core.policy.strict:
            return None, None
        decision = table.take(subject, amounts, now)
        if decision is not None:
            return decision, None
        has_rates, guarded, until = core.lease_terms(subject, now)
        if has_rates:
            return None, None
        piece = table.slice_for(subject, amounts, now, guarded)
        if piece is None:
            return None, None
        return None, Opening(subject, amounts, piece, now, generation, until, guarded,
                             table.new_lease_id())

    def _lease_opened(self, opening: Opening, answer: Decision) -> Decision | None:
        """Register the answer to a slice's check; the decision for the request that opened
        it (None: check that request with Redis as usual)."""
        table = self.leases
        assert table is not None
        if answer.degraded:  # Redis is away: the usual outage policy decides, not a lease
            answer = replace(answer, allowed=False, reservation=None)
        table.opened_with(opening.subject, answer, opening.now_ms,
                          generation=opening.generation, until_ms=opening.until_ms,
                          guarded=opening.guarded)
        return table.take(opening.subject, opening.amounts, opening.now_ms)

    def _lease_settle(self, reservation: Reservation,
                      actual: Usage | None) -> SettleResult | None:
        """Commit (``actual``) or release (None) of a leased reservation, in-process. None
        when its lease went back to Redis while the call was in flight: the caller records
        the actual usage there (idempotently, under the reservation id)."""
        amounts = self.core.amounts(reservation.subject, actual) if actual is not None else None
        table = self.leases
        if table is None:
            return None
        outcome = table.settle(reservation, amounts)
        if outcome == "unknown":
            return None
        if outcome == "duplicate":
            return SettleResult(status="duplicate", id=reservation.id)
        overshoot = amounts is not None and any(
            a > e for a, e in zip(amounts.as_list(), reservation.estimate.as_list(), strict=True))
        return SettleResult(status=outcome, id=reservation.id, actual=amounts,
                            overshoot=overshoot)

    def _lease_release(self, reservation: Reservation) -> SettleResult:
        """Release of a leased reservation: its estimate goes back to the lease, or nowhere
        when the lease already went back (Redis refunded it then)."""
        result = self._lease_settle(reservation, None)
        return result or SettleResult(status="released", id=reservation.id)

    def _lease_work(self, *, force: bool = False, scan: bool = False) -> list[LeaseWork]:
        """The Redis calls due now: shrinks of leases that stopped admitting with calls in
        flight, then returns (a commit of the summed usage, or a release when nothing was
        used)."""
        table = self.leases
        if table is None:
            return []
        now = self.clock()
        leases, shrinks = table.due(now, force=force, scan=scan)
        work = [LeaseWork(s.lease, self.core.plan_shrink(s.lease.reservation, s.keep,
                                                         s.expires_ms, now), s)
                for s in shrinks]
        for lease in leases:
            if any(lease.spent):
                call = self.core.plan_commit(lease.reservation, lease.spent_usage(), now)
            else:
                call = self.core.plan_release(lease.subject.org, lease.id, now)
            work.append(LeaseWork(lease, call))
        return work

    def _lease_work_failed(self, work: LeaseWork, exc: Exception) -> None:
        """One failed hand-back never stops the others."""
        from .shell import UNAVAILABLE, Deferred

        if isinstance(exc, ReservationNotFound):
            return  # Redis lost the lease's reservation: nothing is held; usage (if any) is
            # committed with the plan this process kept, so it never ends here
        if isinstance(exc, UNAVAILABLE):
            log.warning("redis unavailable while returning lease %s: %s", work.lease.id, exc)
            if work.shrink is not None:
                if self.leases is not None:
                    self.leases.retry_shrink(work.shrink)
            elif any(work.lease.spent):
                self._defer(Deferred(usage=work.lease.spent_usage(),
                                     reservation=work.lease.reservation))
            return
        log.error("returning lease %s failed: %r", work.lease.id, exc)
