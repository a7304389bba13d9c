"""Optional leases: admit from a slice of budget reserved in Redis, without a round trip.

A lease is an ordinary reservation whose estimate is ``calls`` times the estimate of the
request that opened it. While it is open, checks of the same subject whose estimate fits what
is left of the slice are admitted in-process, and their commits and releases are settled
in-process too. When the lease stops admitting (after ``seconds``, at the end of a budget
period, when a request does not fit, on a policy change) the unused part of the slice goes
back to Redis at once, keeping only the estimates of calls still in flight (held like
ordinary reservations, for the policy's ``reservation_ttl_seconds``); when those are settled
(or on :meth:`close`), one commit sends the summed actual usage, which Redis counts. Admission
stays exact: the whole slice counts as reserved in Redis while it is held, so no other process
can spend it.

The trade-off, and why leases are off by default: budget held in a slice is unavailable to
other processes until the lease stops admitting (at most ``seconds``, or ``seconds`` plus
``grace`` if the process dies), thresholds, alerts, the ledger and live counters see usage
only when a lease is returned, and the usage admitted under a lease by a process that dies
before returning it is lost (Redis refunds the slice when the reservation expires). Subjects
with rate limits, strict policies, and estimates that leave a hard budget's metric at zero are
never leased: they are decided in Redis call by call, as are the last units of a budget (when
a slice no longer fits).

Nothing here does I/O: the clients call :class:`LeaseTable` under their own I/O.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..results import Decision, LimitStatus, Reservation
from ..subject import Subject
from ..usage import Amounts, Usage, micros_to_usd

#: slices above this (in any metric's unit) are not leased: Lua numbers must stay below 2^53
_MAX_SLICE = 2**50
#: leases handed back with calls still open, remembered for those calls (oldest first beyond)
_MAX_REMEMBERED = 100_000
_ZERO = (0, 0, 0, 0, 0)

SettleOutcome = Literal["committed", "released", "duplicate", "unknown",
                        "was_committed", "was_released"]


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """How leases are sized and how long they live.

    ``calls``: a slice holds this many estimates of the request that opened it.
    ``seconds``: how long a lease admits locally before its unused part goes back to Redis.
    ``grace``: added to ``seconds`` for the Redis reservation's TTL, so that a busy process can
    return a lease late without Redis refunding it first (a late return is still counted);
    it is also how long a dead process's slice stays reserved beyond ``seconds``.
    """

    calls: int = 64
    seconds: float = 1.0
    grace: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.calls, int) or isinstance(self.calls, bool) or self.calls < 2:
            raise ValueError(f"lease calls must be an integer >= 2, got {self.calls!r}")
        for name, value, low, top in (("seconds", self.seconds, 0.01, 300.0),
                                      ("grace", self.grace, 0.0, 3600.0)):
            if isinstance(value, bool) or not (isinstance(value, (int, float))
                                               and math.isfinite(value) and low <= value <= top):
                raise ValueError(f"lease {name} must be in [{low:g}, {top:g}] seconds, "
                                 f"got {value!r}")

    @property
    def ttl_seconds(self) -> float:
        """TTL of the lease's reservation in Redis."""
        return self.seconds + self.grace


@dataclass(slots=True)
class Lease:
    """One lease: a Redis reservation spent locally."""

    subject: Subject
    reservation: Reservation
    remaining: list[int]  #: per metric, in :meth:`Amounts.as_list` order
    deadline_ms: int
    limits: tuple[LimitStatus, ...]
    guarded: tuple[int, ...]  #: metrics with a hard budget (a zero estimate needs some left)
    spent: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    outstanding: dict[str, list[int]] = field(default_factory=dict)
    #: reservation id -> "committed" | "released" (a retry of the other operation is refused)
    settled_ids: dict[str, str] = field(default_factory=dict)
    retired: bool = False
    hold_until_ms: int = 0  #: retired with calls in flight: returned by then at the latest
    taken: int = 0

    @property
    def id(self) -> str:
        return self.reservation.id

    def spent_usage(self) -> Usage:
        """What was committed under the lease, as one usage record."""
        n, i, o, _t, c = self.spent
        return Usage(input_tokens=i, output_tokens=o, invocations=n, cost=micros_to_usd(c))

    def still_held(self) -> Amounts:
        """What the lease's reservation must keep covering once it stops admitting: the
        usage already committed under it (not in Redis yet) and the estimates of the calls
        still in flight."""
        total = list(self.spent)
        for est in self.outstanding.values():
            total = [a + b for a, b in zip(total, est, strict=True)]
        return Amounts(*total)


@dataclass(frozen=True, slots=True)
class Shrink:
    """Keep only ``keep`` of a retired lease's reservation in Redis, until ``expires_ms``."""

    lease: Lease
    keep: Amounts
    expires_ms: int


@dataclass(slots=True)
class _Returned:
    open_ids: set[str]
    until_ms: int
    subject: Subject | None = None  #: to record a call in flight that is committed by id


class LeaseTable:
    """The leases of one client, keyed by subject. Thread-safe; no I/O."""

    def __init__(self, config: LeaseConfig, *, hold_ms: int = 600_000,
                 remember_ms: int = 3_600_000) -> None:
        self.config = config
        #: how long calls in flight keep their estimates once their lease stops admitting
        self.hold_ms = hold_ms
        #: how long a returned lease's reservation ids are recognised (duplicate commits)
        self.remember_ms = remember_ms
        #: how much longer than a lease accepts commits Redis keeps its reservation
        self.keep_ms = max(int(config.grace * 1000), 2000)
        #: bumped by a policy change: leases opened under an older policy never admit
        self.generation = 0
        self._lock = threading.Lock()
        self._active: dict[Subject, Lease] = {}
        self._unsettled: dict[str, Lease] = {}  # lease id -> lease (active or retired)
        self._shrinks: list[Shrink] = []
        # Lease ids are this table's prefix and a sequence number, so that a lease handed
        # back is recognised without remembering it: every call it admitted was settled
        # before (a retry is a duplicate), except those still open when it went back.
        self._prefix = "L" + os.urandom(6).hex() + "-"
        self._seq = 0
        self._returned: dict[str, _Returned] = {}
        self._no_lease_until: dict[Subject, int] = {}
        #: slice usages by scaled amount vector: every check of a busy subject that finds its
        #: lease empty asks for one (all but one then wait for the lease it opens), and
        #: building a Usage converts its cost to Decimal and validates every field
        self._slices: dict[tuple[int, ...], Usage] = {}
        self._next_maintenance = 0
        #: decisions admitted locally, leases opened, leases returned, refused slices
        self.local_admits = 0
        self.opened = 0
        self.returned = 0
        self.refused = 0

    # admission ---------------------------------------------------------------------
    def take(self, subject: Subject, est: Amounts, now_ms: int) -> Decision | None:
        """Admit from the subject's lease, or None (ask Redis). A lease that is past its time
        or too small for ``est`` is retired here (:meth:`due` hands it back)."""
        want = est.as_list()
        with self._lock:
            lease = self._active.get(subject)
            if lease is None:
                return None
            rem = lease.remaining
            # (plain loops: this runs on every leased check, and generators in any() were a
            # measurable part of it)
            left = [r - w for r, w in zip(rem, want, strict=True)]
            fits = now_ms < lease.deadline_ms and min(left) >= 0
            if fits:
                for m in lease.guarded:
                    if want[m] == 0 and rem[m] <= 0:
                        fits = False
                        break
            if not fits:
                self._retire(lease, now_ms)
                return None
            lease.remaining = left
            lease.taken += 1
            rid = f"{lease.id}.{lease.taken}"
            lease.outstanding[rid] = want
            self.local_admits += 1
        reservation = Reservation(id=rid, subject=subject, estimate=est, created_ms=now_ms,
                                  expires_ms=now_ms + self.hold_ms, lease=lease.id)
        return Decision(allowed=True, subject=subject, reservation=reservation,
                        limits=lease.limits, leased=True)

    def slice_for(self, subject: Subject, est: Amounts, now_ms: int,
                  guarded: Sequence[int]) -> Usage | None:
        """The usage a new lease of ``subject`` would reserve, or None when leasing is not
        possible or not worth trying now (refused recently, a hard budget's metric estimated
        at zero, or a slice too large)."""
        with self._lock:
            until = self._no_lease_until.get(subject)
            if until is not None:
                if now_ms < until:
                    return None
                del self._no_lease_until[subject]
        vec = est.as_list()
        if not any(vec) or any(vec[m] == 0 for m in guarded):
            return None
        k = self.config.calls
        scaled = tuple(v * k for v in vec)
        found = self._slices.get(scaled)
        if found is not None:
            return found
        if max(scaled) > _MAX_SLICE:
            return None
        n, i, o, _t, c = scaled
        found = Usage(input_tokens=i, output_tokens=o, invocations=n, cost=micros_to_usd(c))
        if len(self._slices) >= 1024:
            self._slices.clear()
        self._slices[scaled] = found
        return found

    def new_lease_id(self) -> str:
        """The reservation id of the next lease (its slice's check uses it)."""
        with self._lock:
            self._seq += 1
            return f"{self._prefix}{self._seq}"

    def opened_with(self, subject: Subject, decision: Decision, now_ms: int, *,
                    generation: int, until_ms: int, guarded: Sequence[int]) -> None:
        """Register what the check of a slice answered: a new lease (admitting until
        ``until_ms`` at the latest, the end of the subject's earliest period) or a refusal."""
        with self._lock:
            if not decision.allowed or decision.reservation is None:
                self.refused += 1
                self._no_lease_until[subject] = now_ms + int(self.config.seconds * 1000)
                return
            res = decision.reservation
            lease = Lease(subject=subject, reservation=res, remaining=res.estimate.as_list(),
                          deadline_ms=min(now_ms + int(self.config.seconds * 1000), until_ms),
                          limits=decision.limits, guarded=tuple(guarded))
            self._unsettled[lease.id] = lease
            self.opened += 1
            if generation != self.generation:  # the policy changed meanwhile: never admit
                self._retire(lease, now_ms)
                return
            old = self._active.get(subject)
            if old is not None:
                self._retire(old, now_ms)
            self._active[subject] = lease

    # settling local reservations --------------------------------------------------------
    def settle(self, reservation: Reservation, actual: Amounts | None) -> SettleOutcome:
        """Commit (``actual``) or release (None) a reservation admitted from a lease.

        ``unknown`` means the lease went back to Redis while this call was in flight: the
        caller records ``actual`` there (idempotently). A retry of a settled id is a
        ``duplicate``, also after its lease went back (for ``remember_ms``).
        """
        with self._lock:
            lease = self._unsettled.get(reservation.lease)
            if lease is None:
                return self._settle_returned(reservation)
            done = lease.settled_ids.get(reservation.id)
            if done is not None:
                if done == ("committed" if actual is not None else "released"):
                    return "duplicate"
                return "was_committed" if done == "committed" else "was_released"
            est = lease.outstanding.pop(reservation.id, None)
            if est is None:
                return "unknown"
            lease.settled_ids[reservation.id] = "committed" if actual is not None else "released"
            got = actual.as_list() if actual is not None else list(_ZERO)
            lease.spent = [s + a for s, a in zip(lease.spent, got, strict=True)]
            if not lease.retired:
                lease.remaining = [r + e - a
                                   for r, e, a in zip(lease.remaining, est, got, strict=True)]
            elif not lease.outstanding:
                self._next_maintenance = 0  # the last call in flight: return the lease now
            return "committed" if actual is not None else "released"

    def _settle_returned(self, reservation: Reservation) -> SettleOutcome:
        lease_id = reservation.lease
        seq = lease_id[len(self._prefix):]
        if not (lease_id.startswith(self._prefix) and seq.isdigit()
                and 0 < int(seq) <= self._seq
                and reservation.id.startswith(lease_id + ".")):
            return "unknown"  # not a lease of this table: record it (Redis dedupes retries)
        gone = self._returned.get(lease_id)
        if gone is not None and reservation.id in gone.open_ids:
            gone.open_ids.discard(reservation.id)
            if not gone.open_ids:
                del self._returned[lease_id]
            return "unknown"  # in flight when its lease went back: the caller records it
        return "duplicate"

    def find(self, org: str, reservation_id: str) -> Reservation | Literal["settled"] | None:
        """A reservation admitted from a lease of this table, known only by its id (commit
        and release by id, as the HTTP sidecar does them): the reservation to settle
        in-process, ``"settled"`` when its lease went back with the call already settled (a
        retry: a duplicate, never counted again), or None when the id is not one of this
        table's (or names another org)."""
        lease_id, dot, seq = reservation_id.rpartition(".")
        lseq = lease_id[len(self._prefix):]
        if not (dot and seq.isdigit() and lease_id.startswith(self._prefix) and lseq.isdigit()):
            return None
        with self._lock:
            if not 0 < int(lseq) <= self._seq:
                return None
            lease = self._unsettled.get(lease_id)
            if lease is not None:
                subject: Subject | None = lease.subject
                est = lease.outstanding.get(reservation_id, _ZERO)
            else:
                gone = self._returned.get(lease_id)
                if gone is None or reservation_id not in gone.open_ids:
                    return "settled"
                subject, est = gone.subject, _ZERO
        if subject is None or subject.org != org:
            return None
        return Reservation(id=reservation_id, subject=subject, estimate=Amounts(*est),
                           created_ms=0, expires_ms=0, lease=lease_id)

    # handing leases back ------------------------------------------------------------
    def due(self, now_ms: int, *, force: bool = False,
            scan: bool = False) -> tuple[list[Lease], list[Shrink]]:
        """What to send to Redis now: leases to return (commit their usage), and retired
        leases with calls in flight to shrink to those calls' estimates. ``force`` returns
        every lease (shutdown). The table is scanned at most every 100 ms unless something
        changed, ``scan`` or ``force``."""
        with self._lock:
            if not (force or scan) and now_ms < self._next_maintenance:
                shrinks, self._shrinks = self._shrinks, []
                return [], shrinks
            self._next_maintenance = now_ms + 100
            out = []
            for lease in list(self._unsettled.values()):
                if not lease.retired and (force or now_ms >= lease.deadline_ms):
                    self._retire(lease, now_ms)
                if lease.retired and (force or not lease.outstanding
                                      or now_ms >= lease.hold_until_ms):
                    del self._unsettled[lease.id]
                    out.append(lease)
                    if lease.outstanding:
                        self._returned[lease.id] = _Returned(set(lease.outstanding),
                                                             now_ms + self.remember_ms,
                                                             lease.subject)
            shrinks, self._shrinks = self._shrinks, []
            if force:
                shrinks = [s for s in shrinks if s.lease.id in self._unsettled]
            self.returned += len(out)
            self._prune(now_ms)
            return out, shrinks

    def _prune(self, now_ms: int) -> None:
        for lid in [lid for lid, r in self._returned.items() if r.until_ms <= now_ms]:
            del self._returned[lid]
        while len(self._returned) > _MAX_REMEMBERED:
            del self._returned[next(iter(self._returned))]
        for subject in [s for s, t in self._no_lease_until.items() if t <= now_ms]:
            del self._no_lease_until[subject]

    def retry_shrink(self, shrink: Shrink) -> None:
        """A shrink that could not reach Redis is sent again with the next hand-backs (unless
        its lease went back meanwhile)."""
        with self._lock:
            if shrink.lease.id in self._unsettled:
                self._shrinks.append(shrink)

    def retire_all(self, now_ms: int) -> None:
        """Stop admitting from every lease (a policy change); :meth:`due` hands them back."""
        with self._lock:
            self.generation += 1
            for lease in list(self._active.values()):
                self._retire(lease, now_ms)
            self._no_lease_until.clear()

    def _retire(self, lease: Lease, now_ms: int) -> None:
        if lease.retired:
            return
        lease.retired = True
        if self._active.get(lease.subject) is lease:
            del self._active[lease.subject]
        self._next_maintenance = 0
        if lease.outstanding:
            # give the unused part back now; what was spent and what is in flight stays
            # reserved (held like ordinary reservations) until the lease goes back. Redis
            # keeps it ``grace`` longer than the lease accepts commits: the hand-back comes
            # up to a timer period after ``hold_until_ms``, and usage committed in-process
            # must never be refunded by Redis before it arrives there
            lease.hold_until_ms = now_ms + self.hold_ms
            self._shrinks.append(Shrink(lease, lease.still_held(),
                                        lease.hold_until_ms + self.keep_ms))

    @property
    def open_leases(self) -> int:
        return len(self._unsettled)


__all__ = ["Lease", "LeaseConfig", "LeaseTable", "Shrink"]
