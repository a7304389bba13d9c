"""What a client does while Redis is unreachable: which errors mean "not there", and the queue
of usage it keeps in-process to replay (idempotently) once Redis answers again. No I/O."""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..results import Reservation, SettleResult
from ..subject import Subject
from ..usage import Amounts, Usage

log = logging.getLogger("budgetlimiter")

#: Exceptions that mean "Redis is not there" (as opposed to a bug or bad input).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError,
)
#: Redis answered but refused us (credentials, ACL): a misconfiguration, not an outage
REJECTED: tuple[type[BaseException], ...] = (AuthenticationError, AuthorizationError)

#: most operations kept in-process during an outage (the oldest dropped beyond, logged)
MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class Deferred:
    """A commit, record or release to replay when Redis answers again."""

    kind: Literal["commit", "record", "release"]
    usage: Usage | None = None
    reservation: Reservation | None = None
    subject: Subject | None = None
    org: str = ""
    #: the request id of a record, the reservation id of a release
    id: str = ""


class OutageQueue(deque[Deferred]):
    """Operations kept in-process while Redis is unreachable, in order (a deque: every
    successful call asks whether it is empty, which must cost next to nothing).

    Exactly one replayer at a time (sync threads and asyncio tasks alike): a replay holds
    :attr:`replaying`; an entry leaves the queue only after Redis answered it. Entries are
    idempotent in Redis (by reservation or request id), so an entry whose first attempt did
    reach Redis before the connection failed is not counted twice.
    """

    def __init__(self, maxlen: int = MAX_PENDING) -> None:
        super().__init__(maxlen=maxlen)
        #: held by the one flow replaying the queue
        self.replaying = threading.Lock()
        #: entries dropped because the queue was full (for metrics)
        self.dropped = 0

    def push(self, op: Deferred, amounts: Amounts | None) -> SettleResult:
        """Queue ``op``; the result says so (status ``local``)."""
        if len(self) == self.maxlen:
            self.dropped += 1
            log.error("outage queue full (%d): dropping the oldest entry", self.maxlen)
        self.append(op)
        rid = op.reservation.id if op.reservation is not None else op.id
        return SettleResult(status="local", id=rid, actual=amounts)

    def head(self) -> Deferred | None:
        return self[0] if self else None

    def done(self, op: Deferred) -> None:
        """``op`` reached Redis (or can never be applied): take it off the queue."""
        if self and self[0] is op:
            self.popleft()
