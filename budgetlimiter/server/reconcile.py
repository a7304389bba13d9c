"""The reconciler inside the sidecar (``serve --db URL``, off with ``--no-reconcile``).

The durable side is synchronous (SQLAlchemy, a sync Redis client), so it runs as
:class:`~budgetlimiter.durable.service.ReconcileService` on threads of its own, with its own
sync client on the same Redis and policy: the event loop serving checks never waits for SQL.
``/readyz`` and ``/metrics`` read the service's snapshot, taken after every pass, so a probe
or a scrape does no SQL and no extra Redis call for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from .config import ServerConfig
from .metrics import Metrics

if TYPE_CHECKING:  # the durable side needs the sql extra: imported only with --db
    from ..durable.service import ReconcileService, Snapshot


def open_service(config: ServerConfig, policy: Any, clock: Any) -> ReconcileService:
    """Build and start the service for ``config`` (``config.db_url`` is set)."""
    from ..client import BudgetLimiter
    from ..durable.service import ReconcileService, build_sinks
    from ..durable.store.sql import Store

    # the reconciler never records usage, so there is nothing for an outage queue to keep;
    # its calls (a flush of 500 ledgers, a rebuild) get more time than a check
    limiter = BudgetLimiter(policy, config.redis_url, clock=clock, outage_queue=False,
                            timeout=max(2.0, config.redis_timeout))
    sinks = build_sinks(config.webhooks, os.environ.get(config.webhook_secret_env))
    service = ReconcileService(limiter, Store(config.db_url or ""), sinks,
                               interval=config.reconcile_interval,
                               lease_s=config.reconcile_lease or None,
                               policy_file=config.policy_path)
    service.start()
    return service


async def close_service(service: ReconcileService) -> None:
    """Last flush, leases given back, then the service's client and store closed."""
    await asyncio.to_thread(service.stop)
    for close in (service.limiter.close, service.store.close):
        with contextlib.suppress(Exception):
            close()


def status(service: ReconcileService | None, now_ms: int) -> dict[str, Any]:
    """The ``reconcile`` member of ``/readyz``."""
    if service is None:
        return {"enabled": False}
    snap: Snapshot | None = service.snapshot
    out: dict[str, Any] = {"enabled": True, "holder": service.holder, "outbox_backlog": None,
                           "age_seconds": None, "orgs": [], "detail": ""}
    if snap is None:
        out["detail"] = "no reconcile pass yet"
        return out
    out.update(outbox_backlog=snap.backlog, age_seconds=_seconds(now_ms - snap.taken_ms),
               detail=snap.error)
    out["orgs"] = [{"org": o.org, "lease_holder": o.holder,
                    "held_here": o.holder == service.holder,
                    "lag_seconds": None if o.reconciled_ms is None
                    else _seconds(now_ms - o.reconciled_ms)}
                   for o in snap.orgs]
    return out


def export(metrics: Metrics, service: ReconcileService, now_ms: int) -> None:
    """Set the reconcile gauges from the snapshot (series of orgs no longer seen vanish)."""
    snap = service.snapshot
    if snap is None:
        return
    metrics.reconcile_ok.set(0 if snap.error else 1)
    metrics.reconcile_lag.clear()
    metrics.reconcile_lease.clear()
    for o in snap.orgs:
        if o.reconciled_ms is not None:
            metrics.reconcile_lag.labels(o.org).set(_seconds(now_ms - o.reconciled_ms))
        if o.holder:
            here = "1" if o.holder == service.holder else "0"
            metrics.reconcile_lease.labels(o.org, o.holder, here).set(1)
    if snap.backlog is not None:
        metrics.backlog.set(snap.backlog)


def _seconds(ms: int) -> float:
    return round(max(0, ms) / 1000, 3)
