"""The reconciler and the alert deliverer as a background service of a long-running process.

``budgetlimiter reconcile`` runs it in the foreground; ``budgetlimiter serve --db URL`` runs it
on two threads next to the HTTP sidecar. With leases (the default) any number of such
processes share one Redis and one database: each org is reconciled by the holder of its lease,
and alerts are delivered by the holder of the delivery lease. After every pass the service
takes a :class:`Snapshot` (reconcile lag and lease holder per org, outbox backlog) that
``/readyz`` and ``/metrics`` read without any I/O of their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.work_lease import new_holder_id
from .alerts import Deliverer, LogSink, Sink, WebhookSink
from .ownership import Leases
from .reconciler import Reconciler, ReconcileStats

log = logging.getLogger("budgetlimiter.reconciler")
#: orgs a snapshot reports on (bounds /metrics label cardinality)
MAX_SNAPSHOT_ORGS = 200


def build_sinks(webhooks: list[str] | tuple[str, ...], secret: str | None) -> dict[str, Sink]:
    """The log sink plus one signed webhook sink per URL (``webhook``, ``webhook2``, ...)."""
    sinks: dict[str, Sink] = {"log": LogSink("log")}
    if webhooks and not secret:
        raise ValueError("webhooks need a signing secret")
    for i, url in enumerate(webhooks):
        name = "webhook" if i == 0 else f"webhook{i + 1}"
        sinks[name] = WebhookSink(name, url, secret or "")
    return sinks


@dataclass(frozen=True)
class OrgState:
    """One org as the last pass saw it."""

    org: str
    #: holder id of the org's lease ("" when nobody holds it)
    holder: str
    #: epoch ms of the org's last completed reconcile pass (by any process), None if never
    reconciled_ms: int | None


@dataclass(frozen=True)
class Snapshot:
    """What the service knew after its last pass (read by /readyz and /metrics)."""

    taken_ms: int
    orgs: tuple[OrgState, ...] = ()
    #: pending deliveries in the outbox (None: the database did not answer)
    backlog: int | None = None
    #: the last pass's failure, "" when it went through
    error: str = ""


class ReconcileService:
    """Reconciler plus deliverer for one process (``limiter``: a sync BudgetLimiter).

    ``lease_s`` is the lease length (None: no leases, every org reconciled here);
    ``interval`` the seconds between reconcile passes, the most usage Redis can lose.
    """

    def __init__(self, limiter: Any, store: Any, sinks: Mapping[str, Sink], *,
                 interval: float = 2.0, lease_s: float | None = 6.0,
                 policy_file: str | None = None, holder: str | None = None) -> None:
        self.limiter = limiter
        self.store = store
        self.interval = interval
        self.holder = holder or new_holder_id()
        self.leases = (Leases(limiter, limiter.keys.reconcile_lease, holder=self.holder,
                              lease_s=lease_s) if lease_s else None)
        self._deliver_lease = (Leases(limiter, lambda _: limiter.keys.deliver_lease(),
                                      holder=self.holder, lease_s=lease_s) if lease_s else None)
        self.reconciler = Reconciler(limiter, store, sinks=list(sinks), policy_file=policy_file,
                                     leases=self.leases)
        self.deliverer = Deliverer(store, sinks, worker=self.holder)
        self.stop_event = threading.Event()
        self._last: Snapshot | None = None
        self._threads: list[threading.Thread] = []

    def set_policy(self, policy: Any) -> None:
        """A reloaded policy: used from the next pass on, and recorded in the store."""
        self.limiter.set_policy(policy)
        self.reconciler.policy_changed()

    # one-shot ---------------------------------------------------------------------------
    def run_once(self) -> tuple[ReconcileStats, int]:
        """One reconcile pass and one delivery pass: (reconcile stats, deliveries made)."""
        stats = self.reconciler.run_once()
        return stats, self.deliverer.run_once().delivered

    # long-running -------------------------------------------------------------------------
    def start(self) -> None:
        """Run the reconciler and the deliverer on daemon threads (see :meth:`stop`)."""
        self._threads = [
            threading.Thread(target=self.run, name="bl-reconcile", daemon=True),
        ]
        self._threads[0].start()

    def run(self) -> None:
        """Reconcile in this thread until :attr:`stop_event` is set (the deliverer runs on a
        thread of its own); then a last pass, the leases given back, the deliverer joined."""
        if not self._open_store():
            return
        deliver = threading.Thread(target=self._deliver, name="bl-deliver", daemon=True)
        deliver.start()
        self.reconciler.run_forever(self.stop_event, self.interval, self.take_snapshot)
        deliver.join(10)
        if self._deliver_lease is not None:
            self._deliver_lease.release_all()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask both loops to end (after a last flush) and wait for them."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout)

    def _open_store(self) -> bool:
        """Create or upgrade the schema, retrying while the database is down (the sidecar
        starts and answers checks without it)."""
        while not self.stop_event.is_set():
            try:
                self.store.migrate()
                return True
            except Exception as exc:
                msg = " ".join(str(exc).split())[:200]
                log.warning("database unavailable, reconciler waiting: %s", msg)
                self._last = Snapshot(self.limiter.clock(), error=f"database: {msg}")
                self.stop_event.wait(self.interval)
        return False

    def _deliver(self) -> None:
        gate = None
        if self._deliver_lease is not None:
            lease = self._deliver_lease

            def gate() -> bool:
                return lease.hold("deliver")
        self.deliverer.run_forever(self.stop_event, 1.0, gate)

    # what /readyz and /metrics show ------------------------------------------------------
    def take_snapshot(self) -> None:
        """Read the lease holder and the last reconcile time of the orgs of the last pass
        (one pipelined round trip) and the outbox backlog (one SQL count)."""
        keys = self.limiter.keys
        orgs = self.reconciler.last_orgs[:MAX_SNAPSHOT_ORGS]
        now = self.limiter.clock()
        error = ""
        states: tuple[OrgState, ...] = ()
        try:
            pipe = self.limiter.redis.pipeline(transaction=False)
            for org in orgs:
                pipe.get(keys.reconcile_lease(org))
                pipe.get(keys.reconciled(org))
            replies = pipe.execute()
            states = tuple(
                OrgState(org, _text(replies[2 * i]),
                         int(replies[2 * i + 1]) if replies[2 * i + 1] is not None else None)
                for i, org in enumerate(orgs))
        except Exception as exc:
            error = f"redis: {type(exc).__name__}: {str(exc)[:200]}"
            if self._last is not None:  # keep what was known; lag keeps growing
                states = self._last.orgs
        backlog: int | None = None
        try:
            backlog = int(self.store.backlog())
        except Exception as exc:
            error = error or f"database: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        self._last = Snapshot(now, states, backlog, error)

    @property
    def snapshot(self) -> Snapshot | None:
        """The state after the last pass (None before the first one)."""
        return self._last


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)

