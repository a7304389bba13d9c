"""At-least-once delivery of alert events from a durable outbox to sinks.

Each (event, sink) pair is a row of the outbox. A :class:`Deliverer` leases due rows, hands
each to its sink and records the outcome: delivered, retry later with exponential backoff and
jitter, or dead-lettered after ``max_attempts``. A worker that dies mid-batch loses nothing:
its leases expire and another worker claims the rows again (the receiver may then see an event
twice, and dedupes it by id). Every time comes from the injectable ``clock`` (epoch ms).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..store.records import Delivery
from .sinks import DeliveryError, Sink

__all__ = ["Deliverer", "DeliveryStats", "Outbox"]

log = logging.getLogger("budgetlimiter.alerts")
_MAX_ERROR = 200


class Outbox(Protocol):
    """The durable queue of deliveries (implemented by the SQL ``Store``)."""

    def claim_due(self, now_ms: int, limit: int, lease_ms: int, worker: str) -> list[Delivery]:
        """Lease up to ``limit`` pending deliveries due at ``now_ms`` until ``now_ms+lease_ms``."""
        ...

    def mark_delivered(self, event_id: str, sink: str, now_ms: int) -> None:
        """Record a successful delivery (one more attempt) and release the lease."""
        ...

    def mark_retry(self, event_id: str, sink: str, attempts: int, next_attempt_ms: int,
                   error: str) -> None:
        """Record a failed attempt; the delivery is due again at ``next_attempt_ms``."""
        ...

    def mark_dead(self, event_id: str, sink: str, attempts: int, error: str,
                  now_ms: int) -> None:
        """Dead-letter the delivery: no more attempts until requeued."""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """Outcome of one :meth:`Deliverer.run_once` pass."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    unknown_sink: int = 0

    @property
    def total(self) -> int:
        """Deliveries handled in the pass."""
        return self.delivered + self.retried + self.dead + self.unknown_sink


def _default_clock() -> int:
    return time.time_ns() // 1_000_000


def _reason(exc: Exception) -> str:
    """A short error for the outbox and the log (sinks' own messages are already safe)."""
    text = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())  # one line
    return text[:_MAX_ERROR]


class Deliverer:
    """Delivers due outbox rows to ``sinks`` (keyed by sink name).

    A failed attempt ``n`` (counting from 1) is retried after a delay drawn uniformly between
    0.5x and 1x of ``min(max_delay_s, base_delay_s * 2**(n-1))``; after ``max_attempts``
    failures the delivery is dead-lettered. A row naming a sink that is not configured is put
    back (without counting an attempt) and retried after ``max_delay_s``, so adding the sink
    back resumes it. Rows are handled in order; once the lease of a batch has run out the rest
    is left for the next claim, since another worker may already own it.
    """

    def __init__(self, outbox: Outbox, sinks: Mapping[str, Sink], *, max_attempts: int = 12,
                 base_delay_s: float = 1.0, max_delay_s: float = 600.0, lease_s: float = 60.0,
                 batch: int = 100, worker: str | None = None,
                 clock: Callable[[], int] | None = None,
                 rng: random.Random | None = None) -> None:
        if max_attempts < 1 or batch < 1:
            raise ValueError("max_attempts and batch must be at least 1")
        if base_delay_s <= 0 or max_delay_s < base_delay_s or lease_s <= 0:
            raise ValueError("need 0 < base_delay_s <= max_delay_s and lease_s > 0")
        self.outbox = outbox
        self.sinks = dict(sinks)
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.lease_ms = int(lease_s * 1000)
        self.batch = batch
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock or _default_clock
        self.rng = rng or random.Random()

    def backoff_ms(self, attempts: int) -> int:
        """Delay in ms before retrying after ``attempts`` failed attempts (full jitter)."""
        exp = min(max(attempts, 1) - 1, 60)
        cap = min(self.max_delay_s, self.base_delay_s * 2**exp)
        return int(cap * self.rng.uniform(0.5, 1.0) * 1000)

    def run_once(self) -> DeliveryStats:
        """Claim one batch of due deliveries and try each once."""
        start = self.clock()
        claimed = self.outbox.claim_due(start, self.batch, self.lease_ms, self.worker)
        delivered = retried = dead = unknown = 0
        for d in claimed:
            if self.clock() >= start + self.lease_ms:
                log.info("alert lease expired mid-batch; %d deliveries left for the next claim",
                         len(claimed) - (delivered + retried + dead + unknown))
                break
            outcome = self._handle(d)
            if outcome == "delivered":
                delivered += 1
            elif outcome == "retry":
                retried += 1
            elif outcome == "dead":
                dead += 1
            else:
                unknown += 1
        return DeliveryStats(delivered, retried, dead, unknown)

    def _handle(self, d: Delivery) -> str:
        eid = d.event.id
        sink = self.sinks.get(d.sink)
        if sink is None:
            now = self.clock()
            self.outbox.mark_retry(eid, d.sink, d.attempts, now + int(self.max_delay_s * 1000),
                                   f"sink {d.sink!r} is not configured")
            log.warning("alert %s: sink %r is not configured here; retrying later",
                        eid, d.sink)
            return "unknown"
        attempts = d.attempts + 1
        try:
            sink.deliver(d.event, attempts)
        except Exception as exc:
            error = _reason(exc)
            now = self.clock()
            if attempts >= self.max_attempts:
                self.outbox.mark_dead(eid, d.sink, attempts, error, now)
                log.error("alert %s to sink %r dead-lettered after %d attempts: %s",
                          eid, d.sink, attempts, error)
                return "dead"
            delay = self.backoff_ms(attempts)
            self.outbox.mark_retry(eid, d.sink, attempts, now + delay, error)
            log.warning("alert %s to sink %r failed (attempt %d/%d): %s; retry in %.1fs",
                        eid, d.sink, attempts, self.max_attempts, error, delay / 1000)
            return "retry"
        self.outbox.mark_delivered(eid, d.sink, self.clock())
        log.debug("alert %s delivered to sink %r (attempt %d)", eid, d.sink, attempts)
        return "delivered"

    def run_forever(self, stop: threading.Event, interval_s: float = 1.0,
                    gate: Callable[[], bool] | None = None) -> None:
        """Deliver until ``stop`` is set: a full batch is followed at once by the next one,
        otherwise the loop waits ``interval_s`` (on ``stop``, so setting it ends the wait).
        Errors of the outbox itself are logged and retried on the next pass. With ``gate``,
        a pass runs only when it answers True (the process holds the delivery lease)."""
        while not stop.is_set():
            try:
                stats = self.run_once() if gate is None or gate() else DeliveryStats()
            except Exception as exc:
                log.error("alert delivery pass failed: %s", _reason(exc))
                stats = DeliveryStats()
            if stats.total < self.batch:
                stop.wait(interval_s)
