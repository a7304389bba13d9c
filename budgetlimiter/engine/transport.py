"""How the engine's flows reach Redis: every request through the circuit breaker, a NOSCRIPT
reply answered by loading the script, and a script's "your clock is off" answered by learning
the offset from Redis's time and planning the call again. Sub-flows; no I/O."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from ..errors import BackendRejected, BackendUnavailable, ClockSkew
from .breaker import CircuitBreaker
from .calls import Flow, LoadScript, Pipeline, Request, ScriptCall
from .outage import REJECTED, UNAVAILABLE
from .scripts import is_noscript
from .settle_plan import SKEWED

log = logging.getLogger("budgetlimiter")
Clock = Callable[[], int]


def system_clock_ms() -> int:
    """Wall-clock time in epoch milliseconds (the clock periods are computed from)."""
    return time.time_ns() // 1_000_000


def same_call(call: ScriptCall) -> Callable[[int], ScriptCall]:
    """A call that is not planned again after a clock correction (lease hand-backs: their
    periods are the lease's own)."""
    return lambda _now: call


def skewed(reply: Any) -> bool:
    # only the "clock off" answer of check.lua and settle.lua has two values
    return isinstance(reply, list) and len(reply) == 2 and reply[0] == SKEWED


class Transport:
    """The breaker in front of Redis and the clock the engine plans with."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        #: what to add to ``clock`` to get Redis's time (learnt when a script says it is off)
        self.clock_offset_ms = 0
        #: how far a script lets the planned time be from Redis's (ms; -1: not checked)
        self.tolerance_ms = -1
        self.breaker = CircuitBreaker()

    def now(self) -> int:
        """The time decisions are planned with: this host's clock, corrected by the offset
        learnt from Redis when the two disagree by more than the tolerance."""
        return self._clock() + self.clock_offset_ms

    def learn_offset(self, reply: Any) -> None:
        offset = int(reply[1]) - self._clock()
        log.warning("this host's clock is %+d ms off Redis's; planning with Redis's time",
                    offset)
        self.clock_offset_ms = offset

    def judge(self, reply: Any, planned_ms: int) -> None:
        """A script found the time a call was planned with (``planned_ms``) off Redis's by
        more than the tolerance. When Redis's time lies between the planning and now (give
        or take the tolerance), the call was late — it waited in a busy event loop or on a
        slow network — and this host's clock is right: the caller plans again, the offset
        stays. Otherwise the clock is off, and the offset is learnt. (Learning from a late
        call would set an offset of minus the reply's delay and skew every later plan.)"""
        redis_ms = int(reply[1])
        tolerance = max(0, self.tolerance_ms)
        if planned_ms - tolerance <= redis_ms <= self.now() + tolerance:
            log.warning("a call reached Redis %d ms after it was planned (more than the %d ms "
                        "the clock check allows): planning it again", redis_ms - planned_ms,
                        tolerance)
            return
        self.learn_offset(reply)

    # sending ---------------------------------------------------------------------------
    def send(self, request: Request) -> Flow[Any]:
        """Send one request through the circuit breaker. A script call answered NOSCRIPT
        (after SCRIPT FLUSH, a restart, a failover) loads the script and is sent again, once.
        (One generator for all of it: each level of ``yield from`` costs every call.)"""
        if not self.breaker.allow():
            raise BackendUnavailable("redis circuit open")
        try:
            try:
                reply = yield request
            except ResponseError as exc:
                if not (isinstance(request, ScriptCall) and is_noscript(exc)):
                    raise
                yield LoadScript(request.script)
                reply = yield request
        except REJECTED as exc:  # before UNAVAILABLE: redis-py makes them ConnectionErrors
            self.breaker.success()  # Redis answered: it is there, it refused us
            raise BackendRejected(f"redis rejected the client: {exc}") from None
        except UNAVAILABLE:
            self.breaker.failure()
            raise
        except BaseException:  # an error reply, a cancellation: free a half-open probe
            self.breaker.abandon()
            raise
        self.breaker.success()
        return reply

    #: a script call (see :meth:`send`)
    script = send

    def run(self, call: ScriptCall,
            replan: Callable[[int], ScriptCall]) -> Flow[tuple[ScriptCall, Any]]:
        """A script call whose script checks the clock (see :meth:`corrected`)."""
        planned = self.now()  # (the call was planned a moment ago, with this clock)
        reply = yield from self.send(call)
        if skewed(reply):
            return (yield from self.corrected(reply, replan, planned))
        return call, reply

    def corrected(self, reply: Any, replan: Callable[[int], ScriptCall],
                  planned_ms: int) -> Flow[tuple[ScriptCall, Any]]:
        """A script said the call's time is off Redis's (see :meth:`judge`): correct the
        clock if it is off, and send the call planned again (the normal case never gets
        here: one round trip)."""
        for _ in range(2):
            self.judge(reply, planned_ms)
            planned_ms = self.now()
            call = replan(planned_ms)
            reply = yield from self.send(call)
            if not skewed(reply):
                return call, reply
        raise ClockSkew("this host's clock keeps disagreeing with Redis's, or calls reach "
                        "Redis later than the clock check allows (an overloaded process)")

    def pipeline(self, calls: list[ScriptCall]) -> Flow[list[Any]]:
        """Calls in one round trip; those whose script was missing are sent again once."""
        replies: list[Any] = yield from self.send(Pipeline(calls))
        missing = [i for i, r in enumerate(replies) if is_noscript(r)]
        if missing:
            for name in {calls[i].script for i in missing}:
                yield from self.send(LoadScript(name))
            again = yield from self.send(Pipeline([calls[i] for i in missing]))
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
