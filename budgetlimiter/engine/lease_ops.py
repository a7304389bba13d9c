"""The decisions around leases (see :mod:`.leases`) that need the planners: whether a check
may be leased, what a new lease reserves, what a leased reservation's settle answers, and the
script calls that hand leases back. Pure functions of their arguments; no I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..errors import InvalidInput, ReservationNotFound, ReservationSettled
from ..results import Decision, Reservation, SettleResult
from ..subject import Subject
from ..usage import Amounts, Usage
from .calls import ScriptCall
from .leases import Lease, LeaseTable, Shrink
from .planner import Core
from .settle_plan import SettlePlanner

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


def take(table: LeaseTable, core: Core, subject: Subject, estimate: Usage | None,
         reservation_id: str | None, ttl: float | None,
         now: int) -> tuple[Decision | None, Opening | None]:
    """A decision from the subject's lease, else the lease to open (both None: check with
    Redis as usual). Only plain checks (no explicit id or TTL) of subjects without rate
    limits, under a non-strict policy, are leased."""
    if not isinstance(subject, Subject):
        raise InvalidInput(
            f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
    # one policy throughout: a reload meanwhile bumps the generation, and a lease opened
    # under an older one never admits
    generation = table.generation
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


def opened(table: LeaseTable, opening: Opening, answer: Decision) -> Decision | None:
    """Register the answer to a slice's check; the decision for the request that opened it
    (None: check that request with Redis as usual)."""
    if answer.degraded:  # Redis is away: the usual outage policy decides, not a lease
        answer = replace(answer, allowed=False, reservation=None)
    table.opened_with(opening.subject, answer, opening.now_ms, generation=opening.generation,
                      until_ms=opening.until_ms, guarded=opening.guarded)
    return table.take(opening.subject, opening.amounts, opening.now_ms)


def settle(table: LeaseTable, core: Core, reservation: Reservation,
           actual: Usage | None) -> SettleResult | None:
    """Commit (``actual``) or release (None) of a leased reservation, in-process. None when
    its lease went back to Redis while the call was in flight: the caller records the actual
    usage there (idempotently, under the reservation id)."""
    amounts = core.amounts(reservation.subject, actual) if actual is not None else None
    outcome = table.settle(reservation, amounts)
    if outcome == "unknown":
        return None
    if outcome == "duplicate":
        return SettleResult(status="duplicate", id=reservation.id)
    if outcome == "was_released":
        raise ReservationSettled(f"reservation {reservation.id!r} was released: its usage was "
                                 "not counted by this commit (record the usage instead)",
                                 settled_as="released")
    if outcome == "was_committed":
        raise ReservationSettled(f"reservation {reservation.id!r} was committed; a release "
                                 "changes nothing", settled_as="committed")
    overshoot = amounts is not None and any(
        a > e for a, e in zip(amounts.as_list(), reservation.estimate.as_list(), strict=True))
    return SettleResult(status=outcome, id=reservation.id, actual=amounts, overshoot=overshoot)


def work(table: LeaseTable, settle_planner: SettlePlanner, now: int, *, force: bool = False,
         scan: bool = False) -> list[LeaseWork]:
    """The Redis calls due now: shrinks of leases that stopped admitting with calls in flight,
    then returns (a commit of the summed usage, or a release when nothing was used)."""
    leases, shrinks = table.due(now, force=force, scan=scan)
    out = [LeaseWork(s.lease, settle_planner.plan_shrink(s.lease.reservation, s.keep,
                                                         s.expires_ms, now), s)
           for s in shrinks]
    for lease in leases:
        if any(lease.spent):
            call = settle_planner.plan_commit(lease.reservation, lease.spent_usage(), now)
        else:
            call = settle_planner.plan_release(lease.subject.org, lease.id, now)
        out.append(LeaseWork(lease, call))
    return out


def work_failed(table: LeaseTable, item: LeaseWork, exc: Exception, unavailable: bool) -> bool:
    """One failed hand-back never stops the others. True when the lease's usage must be
    queued for replay (Redis unreachable during its final commit)."""
    if isinstance(exc, ReservationNotFound):
        return False  # Redis lost the lease's reservation: nothing is held; its usage is
        # committed with the plan this process kept, so it never ends here
    if unavailable:
        log.warning("redis unavailable while returning lease %s: %s", item.lease.id, exc)
        if item.shrink is not None:
            table.retry_shrink(item.shrink)
            return False
        return any(item.lease.spent)
    log.error("returning lease %s failed: %r", item.lease.id, exc)
    return False
