"""A circuit breaker in front of Redis.

After ``threshold`` consecutive failures the circuit opens: calls are not sent for
``reset_s`` seconds and the outage policy answers at once (no caller waits on a dead Redis,
no connections pile up). Then one probe call is let through (half-open); success closes the
circuit, failure opens it again for twice as long, up to ``max_reset_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("budgetlimiter")


class CircuitBreaker:
    """Consecutive-failure breaker with exponential re-open delay."""

    def __init__(self, threshold: int = 3, reset_s: float = 0.5, max_reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.max_reset_s = max_reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.open_for = reset_s
        self.probing = False
        #: times the circuit opened, and calls answered without Redis (for metrics)
        self.trips = 0
        self.short_circuited = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.open_for:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go to Redis now?"""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        self.short_circuited += 1
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            log.warning("redis is back: circuit closed after %d short-circuited calls",
                        self.short_circuited)
        self.failures = 0
        self.opened_at = None
        self.open_for = self.reset_s
        self.probing = False

    def abandon(self) -> None:
        """The call ended without telling whether Redis is reachable (an error reply, a
        cancelled task): a half-open probe may be sent again."""
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.probing:  # the probe failed: open again, for longer
            self.probing = False
            self.open_for = min(self.max_reset_s, self.open_for * 2)
            self.opened_at = self.clock()
        elif self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = self.clock()
            self.trips += 1
            log.warning("redis unreachable %d times in a row: circuit open for %.1fs "
                        "(outage policy answers meanwhile)", self.failures, self.open_for)
