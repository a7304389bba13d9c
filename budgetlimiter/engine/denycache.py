"""Local deny cache: answer checks of an exhausted budget in-process.

When Redis refuses a check because a hard budget's *committed* usage has reached its limit,
nothing but an operator credit or a policy change can reopen that budget before its period
ends (releases and expiries only return reservations). Further checks that include that
budget are then denied locally, without a round trip, until the period ends or ``ttl``
seconds pass, whichever is first; the TTL bounds how long a credit or a raised limit takes to
be seen. Budgets exhausted only by reservations are never cached (a release may free them).

A cached refusal speaks about the subject that asked: it carries that subject and, as its only
limit, the exhausted budget (a scope both subjects share) with this request's ``requested``
amount, never the limits of the subject whose refusal filled the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..results import Decision, LimitStatus
from ..subject import Subject
from .calls import ScriptCall
from .planner import budget_estimate


@dataclass(slots=True)
class _Entry:
    until_ms: int
    blocked: LimitStatus


class DenyCache:
    """In-process cache of exhausted budgets, keyed by (counter key, metric)."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        if ttl <= 0:
            raise ValueError("deny cache ttl must be positive (pass deny_cache_ttl=None to "
                             "switch the cache off)")
        self.ttl_ms = int(ttl * 1000)
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], _Entry] = {}
        #: checks answered from the cache, and denials stored (for metrics)
        self.hits = 0
        self.stored = 0

    def lookup(self, call: ScriptCall, subject: Subject, now_ms: int) -> Decision | None:
        """A cached denial for this call of ``subject``, or None (then ask Redis)."""
        if not self._entries:
            return None
        for index, bk in enumerate(call.budget_keys):
            entry = self._entries.get(bk)
            if entry is None:
                continue
            if entry.until_ms <= now_ms:
                del self._entries[bk]
                continue
            self.hits += 1
            blocked = replace(entry.blocked, requested=budget_estimate(call, index))
            retry = None
            if blocked.resets_at is not None:
                retry = max(0.0, blocked.resets_at.timestamp() - now_ms / 1000)
            return Decision(allowed=False, subject=subject, reservation=None, limits=(blocked,),
                            blocked_by=blocked, retry_after=retry,
                            reason=f"{blocked.kind}_exceeded", cached=True)
        return None

    def remember(self, call: ScriptCall, decision: Decision, now_ms: int) -> None:
        """Store a denial when its blocking budget is exhausted by committed usage."""
        b = decision.blocked_by
        if (decision.allowed or b is None or b.kind != "budget"
                or b.used is None or b.used < b.limit):
            return
        if b.mode != "hard" or b.resets_at is None:
            return
        try:
            index = decision.limits.index(b)
        except ValueError:  # pragma: no cover - blocked_by always comes from limits
            return
        if index >= len(call.budget_keys):
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        until = min(int(b.resets_at.timestamp() * 1000), now_ms + self.ttl_ms)
        self._entries[call.budget_keys[index]] = _Entry(until, b)
        self.stored += 1

    def clear(self) -> None:
        self._entries.clear()
