"""Who does background work when many processes share one Redis: leases in Redis.

Every sidecar started with ``--db`` runs a reconciler, but each org is reconciled by one of
them at a time: the one holding the org's lease (``P:{org}:lease``, see ``lua/lease.lua``).
The holder extends it on every pass; when the holder dies the lease runs out and another
process takes it on its next pass; a clean shutdown releases it at once. Two holders at once
(a Redis failover to a replica that had not seen the lease) cost duplicate work, never double
counts: the flush protocol is safe with any number of reconcilers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..engine.work_lease import LeaseOp, LeaseState, lease_call, new_holder_id

log = logging.getLogger("budgetlimiter.reconciler")


class Leases:
    """Leases of one kind (``key_of(name)`` is the Redis key), held by ``holder``.

    ``limiter`` is a sync :class:`~budgetlimiter.client.BudgetLimiter` (its connection,
    breaker and NOSCRIPT handling are used). Not shared between threads except for
    :meth:`held`, which returns a copy.
    """

    def __init__(self, limiter: Any, key_of: Callable[[str], str], *,
                 holder: str | None = None, lease_s: float = 6.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if lease_s <= 0:
            raise ValueError("a lease lasts more than 0 seconds")
        self.limiter = limiter
        self.key_of = key_of
        self.holder = holder or new_holder_id()
        self.lease_ms = max(1, int(lease_s * 1000))
        self._monotonic = monotonic
        self._held: set[str] = set()
        #: name -> (holder, when to ask again): leases another process holds are not asked
        #: for on every pass (N sidecars must not cost N calls per org per pass)
        self._elsewhere: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, op: LeaseOp) -> LeaseState:
        state: LeaseState = self.limiter.execute(
            lease_call(self.key_of(name), op, self.holder, self.lease_ms))
        return state

    def hold(self, name: str) -> bool:
        """Take (or extend) the lease of ``name``; False while another process holds it."""
        seen = self._elsewhere.get(name)
        if seen is not None and self._monotonic() < seen[1]:
            return False
        state = self._call(name, "take")
        with self._lock:
            if state.ours:
                if name not in self._held:
                    log.info("lease of %r taken by %s%s", name, self.holder,
                             f" (was {seen[0]})" if seen else "")
                self._held.add(name)
                self._elsewhere.pop(name, None)
                return True
            if name in self._held:
                log.warning("lease of %r lost to %s (this process stalled past its lease)",
                            name, state.holder or "nobody")
                self._held.discard(name)
        # ask again at the latest halfway through its lease, so that a clean release by the
        # holder is noticed well before the lease would have run out
        wait = min(state.ms_left, self.lease_ms // 2) / 1000
        self._elsewhere[name] = (state.holder, self._monotonic() + wait)
        return False

    def release(self, name: str) -> bool:
        """Give the lease of ``name`` back if this process holds it."""
        with self._lock:
            self._held.discard(name)
        return self._call(name, "release").ours

    def release_all(self) -> int:
        """Give back every lease this process holds (clean shutdown); returns how many."""
        released = 0
        for name in self.held():
            try:
                released += self.release(name)
            except Exception as exc:  # Redis down at shutdown: the leases run out by TTL
                log.warning("lease of %r not released (%s); it expires in %d ms", name, exc,
                            self.lease_ms)
        return released

    def held(self) -> set[str]:
        """Names whose lease this process holds (as of its last call)."""
        with self._lock:
            return set(self._held)
