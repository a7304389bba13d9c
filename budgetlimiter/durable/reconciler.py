"""The reconciler: Redis markers → durable SQL record, restore after data loss, alert outbox.

One pass (:meth:`Reconciler.run_once`):

1. **Discover orgs**: the ``dirty-orgs`` set (fast path), every org the store knows (so that
   a Redis that lost everything is noticed), and now and then a ``SCAN`` for dirty sets
   (safety net for Redis Cluster, where the hot path cannot write the global set).
2. **Per org**: resolve a pending flush record (apply it to SQL in one transaction, then
   acknowledge it in Redis); if Redis's epoch differs from the org's flush sequence in SQL,
   Redis lost data → rebuild the counters from SQL; then move the next batch of ledger deltas
   (``lua/flush.lua``) and repeat until nothing is dirty.
3. **Alerts**: threshold-crossing events from the org's stream are written to the outbox
   (deduplicated by their stable id) and only then deleted from the stream; forecast events
   (:mod:`budgetlimiter.durable.forecast_alerts`) go to the same outbox.

Every write is idempotent, so any number of reconcilers may run against one Redis and one
database. With ``leases`` (:class:`~budgetlimiter.durable.ownership.Leases`), only the holder
of an org's lease reconciles it, so N sidecars do the work once. After each org's pass the
time is stored in Redis (``P:{org}:rs``): every process can tell the org's reconcile lag.
What Redis can lose is bounded by the flush interval.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.calls import ScriptCall
from ..engine.keys import KeySpace
from ..engine.outage import UNAVAILABLE
from ..usage import METRIC_BY_CODE
from .forecast_alerts import ForecastAlerts
from .ownership import Leases
from .restore import earliest_day, parse_flush_record, plan_rebuild, today
from .store.records import AlertEvent
from .store.sql import FlushOutcome, Store

log = logging.getLogger("budgetlimiter.reconciler")
#: how long the "last reconciled" time of an org stays in Redis without a new pass
RECONCILED_TTL_MS = 7 * 86_400_000


@dataclass
class ReconcileStats:
    """What one pass did."""

    orgs: int = 0
    flushes: int = 0
    rows: int = 0
    restored: list[str] = field(default_factory=list)
    events: int = 0
    conflicts: int = 0
    #: orgs skipped because another process holds their lease
    elsewhere: int = 0

    def __iadd__(self, other: ReconcileStats) -> ReconcileStats:
        self.orgs += other.orgs
        self.flushes += other.flushes
        self.rows += other.rows
        self.restored += other.restored
        self.events += other.events
        self.conflicts += other.conflicts
        self.elsewhere += other.elsewhere
        return self


def _raw(reply: Any) -> Any:
    return reply


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Reconciler:
    """Flushes usage to SQL, restores Redis from SQL, and feeds the alert outbox.

    ``limiter`` is a sync :class:`~budgetlimiter.client.BudgetLimiter` (its Redis connection,
    key space and policy are used); ``sinks`` names the alert sinks every event is queued for.
    """

    def __init__(self, limiter: Any, store: Store, *, sinks: Sequence[str] = ("log",),
                 batch: int = 500, scan_every: int = 30, policy_file: str | None = None,
                 leases: Leases | None = None) -> None:
        self.limiter = limiter
        self.store = store
        #: recorded in the store (table policy_versions) as the policy in force
        self.policy_file = policy_file
        self.sinks = list(sinks)
        self.batch = batch
        self.scan_every = scan_every
        #: with leases, an org is reconciled only by the process holding its lease
        self.leases = leases
        #: the orgs of the last pass (what /readyz and /metrics report on)
        self.last_orgs: list[str] = []
        self._passes = 0
        self._policy_pending = True  # record the policy in force on the next pass
        #: ``budget.forecast_exceeded`` events, evaluated in the same passes
        self.forecasts = ForecastAlerts(limiter, store, self.sinks)

    @property
    def keys(self) -> KeySpace:
        k: KeySpace = self.limiter.keys
        return k

    @property
    def redis(self) -> Any:
        return self.limiter.redis

    def _run(self, call: ScriptCall) -> Any:
        return self.limiter.execute(call)

    def _script(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        return self._run(ScriptCall(name, keys, args, _raw))

    # discovery -------------------------------------------------------------------
    def discover(self) -> list[str]:
        """Orgs to look at in this pass."""
        orgs = {_s(o) for o in self.redis.smembers(self.keys.dirty_orgs)}
        orgs.update(self.store.known_orgs())
        if self.scan_every and self._passes % self.scan_every == 0:
            for key in self.redis.scan_iter(match=self.keys.org_pattern(), count=1000):
                orgs.add(self.keys.org_of(_s(key)))
        return sorted(orgs)

    # one org -------------------------------------------------------------------------
    def reconcile_org(self, org: str) -> ReconcileStats:
        """Flush, restore if needed, and drain alert events of one org."""
        stats = ReconcileStats(orgs=1)
        ks = self.keys
        self.redis.srem(ks.dirty_orgs, org)
        for _ in range(1000):  # bounded: one batch per iteration
            seq = self.store.org_seq(org)
            pending = self.redis.get(ks.pending_flush(org))
            if pending is not None:
                self._apply_pending(org, _s(pending), seq, stats)
                continue
            epoch = self.redis.get(ks.epoch(org))
            if epoch is None or _s(epoch) != str(seq):
                # seq 0 and no epoch: first contact with this org, nothing durable to lose
                self.restore_org(org, seq, first_contact=epoch is None and seq == 0)
                if not (epoch is None and seq == 0):
                    stats.restored.append(org)
                continue
            reply = self._script("flush", [ks.dirty(org), ks.epoch(org), ks.pending_flush(org)],
                                 [str(seq), uuid.uuid4().hex, self.batch])
            if _s(reply[0]) == "empty":
                break
        else:  # pragma: no cover - more than 1000 batches in one pass: continue next pass
            self.redis.sadd(ks.dirty_orgs, org)
        stats.events += self.drain_events(org)
        try:
            stats.events += self.forecasts.run_org(org)
        except Exception:  # a forecast must never hold up flushing and threshold alerts
            log.exception("forecast alerts of org %r failed; tried again next pass", org)
        return stats

    def _apply_pending(self, org: str, record: str, seq: int, stats: ReconcileStats) -> None:
        flush_id, rows = parse_flush_record(record, self.keys)
        outcome = self.store.apply_flush(org, flush_id, seq, rows)
        if outcome is FlushOutcome.CONFLICT:
            stats.conflicts += 1
            return
        if outcome is FlushOutcome.APPLIED:
            stats.flushes += 1
            stats.rows += len(rows)
        # the SQL transaction is committed: only now drop the record from Redis
        self._script("ack", [self.keys.epoch(org), self.keys.pending_flush(org)],
                     [flush_id, str(self.store.org_seq(org))])

    def restore_org(self, org: str, seq: int | None = None, now_ms: int | None = None, *,
                    first_contact: bool = False) -> int:
        """Rebuild the org's counters from SQL plus unflushed deltas; returns counters raised."""
        seq = self.store.org_seq(org) if seq is None else seq
        now = self.limiter.clock() if now_ms is None else now_ms
        policy = self.limiter.policy
        first, last = earliest_day(policy, org, now), today(policy, org, now)
        rows = self.store.usage_rows(org, first, last)
        ledgers = [_s(k) for k in self.redis.smembers(self.keys.dirty(org))]
        adjustments = self.store.adjustments(org, first, last)
        period_ids = self._period_ids(org, now)
        fired = self.store.fired_thresholds(org, period_ids)
        call = plan_rebuild(policy, self.keys, org, seq, now, rows, ledgers, adjustments, fired)
        raised = int(self._run(call))
        log.log(logging.INFO if first_contact else logging.WARNING,
                "%s org %r from the durable record (seq %d, %d counters raised)",
                "initialised" if first_contact else "restored", org, seq, raised)
        return raised

    def _period_ids(self, org: str, now_ms: int) -> list[str]:
        from ..policy.periods import PeriodKind, previous_window, window_at

        policy = self.limiter.policy
        tz, ws = policy.timezone_for(org), policy.week_start_index()
        out = []
        for kind in PeriodKind:
            w = window_at(kind, now_ms, tz, ws)
            out += [w.id, previous_window(w, tz, ws).id]
        return out

    def drain_events(self, org: str) -> int:
        """Move threshold events from Redis to the SQL outbox; delete them after commit."""
        ks = self.keys
        total = 0
        while True:
            entries = self.redis.xrange(ks.events(org), count=self.batch)
            if not entries:
                return total
            events = []
            for _, fields in entries:
                f = {_s(k): _s(v) for k, v in fields.items()}
                ck = ks.parse_counter(f["k"])
                events.append(AlertEvent(
                    org=org, scope=str(ck.scope), metric=METRIC_BY_CODE[f["m"]].value,
                    period=ck.period.value, period_id=ck.period_id, threshold=int(f["th"]),
                    used=int(f["u"]), limit=int(f["l"]), occurred_ms=int(f["t"])))
            total += self.store.record_alerts(events, self.sinks, self.limiter.clock())
            self.redis.xdel(ks.events(org), *[eid for eid, _ in entries])

    # loops ---------------------------------------------------------------------------
    def record_policy(self) -> str | None:
        """Record the policy file's text as the version in force (idempotent by content)."""
        if not self.policy_file:
            return None
        from pathlib import Path

        text = Path(self.policy_file).read_text(encoding="utf-8")
        return self.store.record_policy(text, self.policy_file, self.limiter.clock())

    def policy_changed(self) -> None:
        """The policy was reloaded: record its text as the version in force on the next
        pass (from the reconciler's thread, never the caller's)."""
        self._policy_pending = True

    def run_once(self) -> ReconcileStats:
        """One full pass over every org that may need work."""
        if self._policy_pending:
            self.record_policy()
            self._policy_pending = False
        stats = ReconcileStats()
        self.last_orgs = orgs = self.discover()
        for org in orgs:
            # outside the try: Redis down ends the pass (run_forever waits and retries)
            if self.leases is not None and not self.leases.hold(org):
                stats.elsewhere += 1
                continue
            try:
                stats += self.reconcile_org(org)
            except UNAVAILABLE:
                raise
            except Exception:
                log.exception("reconcile of org %r failed; retried next pass", org)
                self.redis.sadd(self.keys.dirty_orgs, org)
                continue
            self.redis.set(self.keys.reconciled(org), self.limiter.clock(),
                           px=RECONCILED_TTL_MS)
        self._passes += 1
        return stats

    def run_forever(self, stop: threading.Event, interval: float = 2.0,
                    after_pass: Callable[[], None] | None = None) -> None:
        """Run passes every ``interval`` seconds until ``stop`` is set; then one last pass,
        so that a graceful shutdown flushes what is pending, and give the leases back.
        ``after_pass`` runs after every pass, failed or not. A pass that fails (Redis or the
        database down) is logged and tried again after ``interval``: the loop never dies."""
        while not stop.is_set():
            started = time.monotonic()
            self._pass_logged(after_pass)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
        self._pass_logged(after_pass, final=True)
        if self.leases is not None:
            released = self.leases.release_all()
            log.info("reconciler stopped; %d org leases released", released)

    def _pass_logged(self, after_pass: Callable[[], None] | None, final: bool = False) -> None:
        what = "final flush skipped" if final else "reconciler waiting"
        try:
            self.run_once()
        except UNAVAILABLE as exc:
            log.warning("%s, redis unavailable: %s", what, exc)
        except Exception as exc:  # the database down (discovery reads it), or a bug
            log.warning("%s, pass failed: %s: %s", what, type(exc).__name__,
                        " ".join(str(exc).split())[:200])
        if after_pass is not None:
            try:
                after_pass()
            except Exception as exc:
                log.debug("after-pass hook failed: %s", exc)
