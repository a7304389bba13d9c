"""What the sync and asyncio clients share besides the core: configuration, the clock, and the
handling of Redis outages. No I/O here either."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..backends import parse_backend
from ..policy import OutagePolicy, Policy, load_policy
from ..results import Decision, Reservation, SettleResult
from ..subject import Subject
from ..usage import Usage
from .breaker import CircuitBreaker
from .calls import ScriptCall
from .denycache import DenyCache
from .keys import DEFAULT_PREFIX, KeySpace
from .lease_client import LeaseHelpers
from .leases import LeaseConfig, LeaseTable
from .planner import Core
from .scripts import Registry

log = logging.getLogger("budgetlimiter")

Clock = Callable[[], int]
#: Exceptions that mean "Redis is not there" (as opposed to a bug or bad input).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError,
)
#: Redis answered but refused us (credentials, ACL): a misconfiguration, not an outage
REJECTED: tuple[type[BaseException], ...] = (AuthenticationError, AuthorizationError)


#: most usage records kept in-process during an outage (oldest dropped beyond)
MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class Deferred:
    """A commit (``reservation`` set) or a record (``subject``/``request_id`` set) to replay."""

    usage: Usage
    reservation: Reservation | None = None
    subject: Subject | None = None
    request_id: str = ""


def system_clock_ms() -> int:
    """Wall-clock time in epoch milliseconds (the clock periods are computed from)."""
    return time.time_ns() // 1_000_000


def as_policy(policy: Policy | str | Path) -> Policy:
    if isinstance(policy, Policy):
        return policy
    return load_policy(Path(policy))


class ClientBase(LeaseHelpers):
    """Configuration and outage behaviour common to both clients."""

    def __init__(self, policy: Policy | str | Path, redis: str | Any,
                 connect: Callable[..., Any], *, timeout: float, cluster: bool | None,
                 prefix: str, clock: Clock | None, deny_cache_ttl: float | None = 5.0,
                 leases: LeaseConfig | None = None) -> None:
        if isinstance(redis, str):
            self.redis = connect(redis, timeout=timeout)
            is_cluster = parse_backend(redis).cluster
        else:  # an existing redis-py client
            self.redis = redis
            is_cluster = type(redis).__name__ == "RedisCluster"
        self.scripts = Registry.default()
        self.core = Core(as_policy(policy), KeySpace(prefix or DEFAULT_PREFIX),
                         cluster=is_cluster if cluster is None else cluster)
        self.clock: Clock = clock or system_clock_ms
        #: exhausted budgets answered in-process (None: off); see :mod:`budgetlimiter.engine.denycache`
        self.deny_cache = DenyCache(deny_cache_ttl) if deny_cache_ttl else None
        #: usage counted while Redis was unreachable, recorded (idempotently) once it is back
        self.pending_local: deque[Deferred] = deque(maxlen=MAX_PENDING)
        self.breaker = CircuitBreaker()
        #: optional leases (None: off); see :mod:`budgetlimiter.engine.leases`
        pol = self.core.policy
        self.leases = LeaseTable(leases, hold_ms=pol.reservation_ttl_seconds * 1000,
                                 remember_ms=pol.idempotency_seconds * 1000) \
            if leases is not None else None

    @property
    def policy(self) -> Policy:
        return self.core.policy

    def set_policy(self, policy: Policy | str | Path) -> None:
        """Swap the policy atomically (requests see the old or the new one, never a mix)."""
        new = as_policy(policy)
        self.core = Core(new, self.core.keys, cluster=self.core.cluster)
        if self.deny_cache is not None:
            self.deny_cache.clear()
        if self.leases is not None:
            self.leases.hold_ms = new.reservation_ttl_seconds * 1000
            self.leases.remember_ms = new.idempotency_seconds * 1000
            self.leases.retire_all(self.clock())

    def _prepare_check(self, subject: Subject, estimate: Usage | None,
                       reservation_id: str | None, ttl: float | None
                       ) -> tuple[ScriptCall, Usage, int, Decision | None]:
        """Plan a check; the last item is a cached denial that makes the call unnecessary."""
        est = estimate if estimate is not None else Usage()
        now = self.clock()
        call = self.core.plan_check(subject, est, now, reservation_id=reservation_id,
                                    ttl_seconds=ttl)
        return call, est, now, self._cached_denial(call, now)

    def _return_leases(self, *, force: bool = False, scan: bool = False) -> object:
        """Hand due leases back to Redis (the sync client inline, the async one in a task)."""
        raise NotImplementedError

    def _prepare_release(self, reservation: Reservation | str,
                         org: str | None) -> tuple[ScriptCall, str] | SettleResult:
        """The release call, or the result when nothing needs Redis (a local reservation, or
        one admitted from a lease: released in-process)."""
        if isinstance(reservation, Reservation):
            if reservation.local:
                return SettleResult(status="released", id=reservation.id)
            if reservation.lease:
                released = self._lease_release(reservation)
                self._return_leases()
                return released
            return (self.core.plan_release(reservation.subject.org, reservation.id,
                                           self.clock()), reservation.id)
        if org is None:
            raise TypeError("release by id needs org=")
        return self.core.plan_release(org, reservation, self.clock()), reservation

    def _cached_denial(self, call: ScriptCall, now_ms: int) -> Decision | None:
        return self.deny_cache.lookup(call, now_ms) if self.deny_cache is not None else None

    def _decided(self, call: ScriptCall, reply: Any, now_ms: int) -> Decision:
        decision: Decision = call.parse(reply)
        if not decision.allowed and self.deny_cache is not None:
            self.deny_cache.remember(call, decision, now_ms)
        return decision

    def _unavailable_decision(self, call: ScriptCall, subject: Subject, estimate: Usage,
                              exc: BaseException) -> Decision:
        log.warning("redis unavailable during check of %s: %s", subject, exc)
        if self.core.policy.outage is OutagePolicy.FAIL_OPEN:
            now = self.clock()
            reservation = None
            if call.args[3] != 1:  # not a dry run
                rid = call.keys[1].rsplit(":r:", 1)[1]
                reservation = Reservation(id=rid, subject=subject,
                                          estimate=self.core.amounts(subject, estimate),
                                          created_ms=now, expires_ms=now, local=True)
            return Decision(allowed=True, subject=subject, reservation=reservation, limits=(),
                            reason="backend_unavailable", degraded=True)
        return Decision(allowed=False, subject=subject, reservation=None, limits=(),
                        reason="backend_unavailable", degraded=True)

    def _defer(self, op: Deferred) -> SettleResult:
        """Keep a commit or record in-process while Redis is unreachable; ``flush_local``
        replays it when Redis answers again. Both are idempotent (by reservation id or
        request id), so a call that did reach Redis before the connection failed is not
        counted twice."""
        if len(self.pending_local) == self.pending_local.maxlen:
            log.error("local usage buffer full (%d): dropping the oldest entry",
                      self.pending_local.maxlen)
        self.pending_local.append(op)
        if op.reservation is not None:
            subject, rid = op.reservation.subject, op.reservation.id
        else:
            assert op.subject is not None
            subject, rid = op.subject, op.request_id
        return SettleResult(status="local", id=rid, actual=self.core.amounts(subject, op.usage))

    def _local_commit(self, reservation: Reservation, actual: Usage) -> SettleResult:
        """Commit of a reservation admitted without Redis (fail_open): recorded later."""
        return self._defer(Deferred(usage=actual, subject=reservation.subject,
                                    request_id="local-" + reservation.id))

    def _dirty_follow_up(self, call: ScriptCall, reply: Any) -> bool:
        """On Redis Cluster the settle script cannot add the org to the global dirty set
        (another slot); this says whether the client must."""
        return self.core.cluster and int(reply[0]) in (1, 3) and int(reply[1]) == 1
