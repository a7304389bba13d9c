"""What both clients are besides a driver: their Redis connection, their engine, and the
configuration and state they expose. No I/O and no operation here: the operations are the
engine's flows, which each client drives in its own way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import open_backend
from .engine.breaker import CircuitBreaker
from .engine.denycache import DenyCache
from .engine.engine import DEFAULT_CLOCK_TOLERANCE, Clock, Engine
from .engine.keys import KeySpace
from .engine.leases import LeaseConfig, LeaseTable
from .engine.scripts import Registry
from .forecast.samples import SampleBook
from .policy import Policy

#: ``max_clock_skew`` not given: check the system clock, trust an injected one
UNSET: Any = object()


class ClientSurface:
    """The connection, the engine and the read-only state of a client."""

    def __init__(self, policy: Policy | str | Path, redis: str | Any,
                 connect: Callable[..., Any], *, timeout: float, prefix: str,
                 clock: Clock | None, cluster: bool | None, deny_cache_ttl: float | None,
                 leases: LeaseConfig | None, outage_queue: bool,
                 max_clock_skew: float | None) -> None:
        self.redis, is_cluster = open_backend(redis, connect, timeout)
        if max_clock_skew is UNSET:
            max_clock_skew = None if clock is not None else DEFAULT_CLOCK_TOLERANCE
        #: the sans-I/O engine whose flows this client drives
        self.engine = Engine(policy, cluster=is_cluster if cluster is None else cluster,
                             prefix=prefix, clock=clock, deny_cache_ttl=deny_cache_ttl,
                             leases=leases, outage_queue=outage_queue,
                             clock_tolerance=max_clock_skew)
        self._scripts = Registry.default()
        #: recent readings of the counters this client forecast (see ``forecast``)
        self.samples = SampleBook()

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def set_policy(self, policy: Policy | str | Path) -> None:
        """Swap the policy atomically (requests see the old or the new one, never a mix)."""
        self.engine.set_policy(policy)

    def clock(self) -> int:
        """The time decisions use (epoch ms): the clock, corrected to Redis's if it is off."""
        return self.engine.now()

    @property
    def keys(self) -> KeySpace:
        return self.engine.keys

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker in front of Redis (``state``, counters for metrics)."""
        return self.engine.breaker

    @property
    def deny_cache(self) -> DenyCache | None:
        """The cache of exhausted budgets (None: off)."""
        return self.engine.deny_cache

    @property
    def leases(self) -> LeaseTable | None:
        """The open leases (None: leases off)."""
        return self.engine.leases

    @property
    def queued(self) -> int:
        """Commits, records and releases kept in-process during an outage, not yet replayed."""
        return self.engine.queued
