"""Optional leases: admit from a slice of budget reserved in Redis, without a round trip.

A lease is an ordinary reservation whose estimate is ``calls`` times the estimate of the
request that opened it. While it is open, checks of the same subject whose estimate fits what
is left of the slice are admitted in-process, and their commits and releases are settled
in-process too. When the lease ends (after ``seconds``, when a request does not fit, on
:meth:`close`) one commit sends the summed actual usage to Redis, which counts it and refunds
the unused part of the slice. Admission stays exact: the whole slice counts as reserved in
Redis while it is held, so no other process can spend it.

The trade-off, and why leases are off by default: budget held in a slice is unavailable to
other processes until the lease ends (at most ``seconds`` plus ``grace`` if the process dies),
thresholds, alerts, the ledger and live counters see usage only when a lease ends, and the
usage admitted under a lease by a process that dies before returning it is lost (its slice is
refunded by Redis when the reservation expires). When a slice does not fit (a budget is nearly
spent) or the subject has a rate limit that a slice would exceed, checks go to Redis one by
one as without leases, so the edge of a budget is decided exactly.

Nothing here does I/O: the clients call :class:`LeaseTable` under their own I/O.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Literal

from .results import Decision, LimitStatus, Reservation
from .subject import Subject
from .usage import Amounts, Usage, micros_to_usd

#: slices above this (in any metric's unit) are not leased: Lua numbers must stay below 2^53
_MAX_SLICE = 2**50


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """How leases are sized and how long they live.

    ``calls``: a slice holds this many estimates of the request that opened it.
    ``seconds``: how long a lease admits locally before its usage is sent to Redis.
    ``grace``: added to ``seconds`` for the Redis reservation's TTL, so that a busy process can
    return a lease late without Redis refunding it first (a late return is still counted).
    """

    calls: int = 64
    seconds: float = 1.0
    grace: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.calls, int) or isinstance(self.calls, bool) or self.calls < 2:
            raise ValueError(f"lease calls must be an integer >= 2, got {self.calls!r}")
        for name, value, top in (("seconds", self.seconds, 300.0), ("grace", self.grace, 3600.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and 0 <= value <= top) or (name == "seconds" and value == 0):
                raise ValueError(f"lease {name} must be in {'(0' if name == 'seconds' else '[0'}"
                                 f", {top:g}] seconds, got {value!r}")

    @property
    def ttl_seconds(self) -> float:
        """TTL of the lease's reservation in Redis."""
        return self.seconds + self.grace


@dataclass(slots=True)
class Lease:
    """One open (or ending) lease: a Redis reservation spent locally."""

    subject: Subject
    reservation: Reservation
    remaining: list[int]  #: per metric, in :meth:`Amounts.as_list` order
    deadline_ms: int
    limits: tuple[LimitStatus, ...]
    spent: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    outstanding: dict[str, list[int]] = field(default_factory=dict)
    settled_ids: set[str] = field(default_factory=set)
    retired: bool = False
    taken: int = 0

    @property
    def id(self) -> str:
        return self.reservation.id

    def spent_usage(self) -> Usage:
        """What was committed under the lease, as one usage record."""
        n, i, o, _t, c = self.spent
        return Usage(input_tokens=i, output_tokens=o, invocations=n, cost=micros_to_usd(c))


def _amounts(vec: list[int]) -> Amounts:
    return Amounts(*vec)


class LeaseTable:
    """The leases of one client, keyed by subject. Thread-safe; no I/O."""

    def __init__(self, config: LeaseConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._active: dict[Subject, Lease] = {}
        self._unsettled: dict[str, Lease] = {}  # lease id -> lease (active or retired)
        self._no_lease_until: dict[Subject, int] = {}
        self._next_maintenance = 0
        #: decisions admitted locally, leases opened, leases returned, refused slices
        self.local_admits = 0
        self.opened = 0
        self.returned = 0
        self.refused = 0

    # admission ---------------------------------------------------------------------
    def take(self, subject: Subject, est: Amounts, now_ms: int) -> Decision | None:
        """Admit from the subject's lease, or None (ask Redis). A lease that is past its time
        or too small for ``est`` is retired here (returned by :meth:`due`)."""
        want = est.as_list()
        with self._lock:
            lease = self._active.get(subject)
            if lease is None:
                return None
            if now_ms >= lease.deadline_ms or any(
                    r < w for r, w in zip(lease.remaining, want, strict=True)):
                self._retire(lease)
                return None
            lease.remaining = [r - w for r, w in zip(lease.remaining, want, strict=True)]
            lease.taken += 1
            rid = f"{lease.id}.{lease.taken}"
            lease.outstanding[rid] = want
            self.local_admits += 1
        reservation = Reservation(id=rid, subject=subject, estimate=est, created_ms=now_ms,
                                  expires_ms=lease.deadline_ms, lease=lease.id)
        return Decision(allowed=True, subject=subject, reservation=reservation,
                        limits=lease.limits, leased=True)

    def slice_for(self, subject: Subject, est: Amounts, now_ms: int) -> Usage | None:
        """The usage a new lease of ``subject`` would reserve, or None when leasing is not
        worth trying now (refused recently, or a slice would be too large)."""
        with self._lock:
            until = self._no_lease_until.get(subject)
            if until is not None:
                if now_ms < until:
                    return None
                del self._no_lease_until[subject]
        k = self.config.calls
        vec = [v * k for v in est.as_list()]
        if max(vec) > _MAX_SLICE:
            return None
        n, i, o, _t, c = vec
        return Usage(input_tokens=i, output_tokens=o, invocations=n, cost=micros_to_usd(c))

    def opened_with(self, subject: Subject, decision: Decision, now_ms: int) -> None:
        """Register the lease that ``decision`` (a check of a slice) opened or refused."""
        with self._lock:
            if not decision.allowed or decision.reservation is None:
                self.refused += 1
                self._no_lease_until[subject] = now_ms + int(self.config.seconds * 1000)
                return
            old = self._active.get(subject)
            if old is not None:
                self._retire(old)
            res = decision.reservation
            lease = Lease(subject=subject, reservation=res, remaining=res.estimate.as_list(),
                          deadline_ms=now_ms + int(self.config.seconds * 1000),
                          limits=decision.limits)
            self._active[subject] = lease
            self._unsettled[lease.id] = lease
            self.opened += 1

    # settling local reservations --------------------------------------------------------
    def settle(self, reservation: Reservation, actual: Amounts | None
               ) -> tuple[Literal["committed", "released", "duplicate", "unknown"], bool]:
        """Commit (``actual``) or release (None) a reservation admitted from a lease.

        Returns (status, lease ready to return). Status ``unknown`` means the lease already
        went back to Redis: the caller records ``actual`` there instead (idempotently).
        """
        with self._lock:
            lease = self._unsettled.get(reservation.lease)
            if lease is None:
                return "unknown", False
            if reservation.id in lease.settled_ids:
                return "duplicate", False
            est = lease.outstanding.pop(reservation.id, None)
            if est is None:
                return "unknown", False
            lease.settled_ids.add(reservation.id)
            got = actual.as_list() if actual is not None else [0, 0, 0, 0, 0]
            lease.spent = [s + a for s, a in zip(lease.spent, got, strict=True)]
            if not lease.retired:
                lease.remaining = [r + e - a
                                   for r, e, a in zip(lease.remaining, est, got, strict=True)]
            ready = lease.retired and not lease.outstanding
            return ("committed" if actual is not None else "released"), ready

    # returning leases -----------------------------------------------------------------
    def due(self, now_ms: int, *, force: bool = False) -> list[Lease]:
        """Leases to return now: retired ones with nothing outstanding, ones past their time
        (retired first), and ones whose outstanding reservations are overdue. Removes them.
        Cheap when called often: the table is scanned at most every 100 ms unless forced."""
        with self._lock:
            if not force and now_ms < self._next_maintenance:
                return []
            self._next_maintenance = now_ms + 100
            hard_ms = int(self.config.grace * 500)  # half the grace: return before Redis expires
            out = []
            for lease in list(self._unsettled.values()):
                if not lease.retired and (force or now_ms >= lease.deadline_ms):
                    self._retire(lease)
                if lease.retired and (force or not lease.outstanding
                                      or now_ms >= lease.deadline_ms + hard_ms):
                    del self._unsettled[lease.id]
                    out.append(lease)
            self.returned += len(out)
            return out

    def retire_all(self) -> None:
        """Stop admitting from every lease (a policy change); :meth:`due` returns them."""
        with self._lock:
            for lease in list(self._active.values()):
                self._retire(lease)
            self._no_lease_until.clear()
            self._next_maintenance = 0

    def _retire(self, lease: Lease) -> None:
        lease.retired = True
        if self._active.get(lease.subject) is lease:
            del self._active[lease.subject]
        self._next_maintenance = 0

    @property
    def open_leases(self) -> int:
        return len(self._unsettled)


__all__ = ["Lease", "LeaseConfig", "LeaseTable"]
