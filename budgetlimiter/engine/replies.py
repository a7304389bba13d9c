"""Reading a reply of ``lua/check.lua`` into a :class:`~budgetlimiter.results.Decision`.

The shape of what a caller gets, whichever path the script took:

- an admitted check that reserved (not a dry run): every limit reports ``taken`` and
  ``used``/``reserved`` are ``None``. The script's fast path reads only the ``held`` counter
  (used + reserved); its full path (a carry to compute, a budget that did not fit before the
  expiry sweep) reads both, but the answer is the same shape either way;
- a refusal, a dry run and a status read: ``used`` and ``reserved`` of every limit;
- every limit reports ``requested``, the amount of its metric this request asked for (0 in
  status reads), so a refusal says what did not fit next to ``limit``, ``used``, ``reserved``;
- rate limits report ``limit`` = the rate per period, ``burst`` = the bucket, ``taken`` = how
  much of the bucket is in use (``remaining`` = ``burst - taken``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ReservationExists
from ..policy import Mode
from ..results import Decision, LimitState, LimitStatus, Reservation, ms_to_datetime
from ..subject import Subject
from ..usage import METRIC_ORDER

if TYPE_CHECKING:
    from .planner import _Budget, _Rate

_METRIC_INDEX = {m: i for i, m in enumerate(METRIC_ORDER)}
#: the amount vector of a status read: nothing requested
NOTHING = (0, 0, 0, 0, 0)


class ReplyReader:
    """Turns a check reply into limit statuses; everything that does not depend on the reply
    (scope, metric, period, mode, reset time, origin) is computed once per template."""

    __slots__ = ("budgets", "rates")

    def __init__(self, budgets: Sequence[_Budget], rates: Sequence[_Rate]) -> None:
        self.budgets = [
            (b.scopelimits.scope, b.spec.metric, b.spec.period.value, b.spec.mode.value,
             b.spec.units, ms_to_datetime(b.window.end_ms), b.origin, b.spec.mode is Mode.SOFT,
             _METRIC_INDEX[b.spec.metric])
            for b in budgets]
        self.rates = [
            (r.scopelimits.scope, r.spec.metric, f"per {r.spec.per}", r.spec.limit,
             r.spec.burst_units, math.ceil(r.spec.per_ms * 1000 / r.spec.limit), r.origin,
             _METRIC_INDEX[r.spec.metric])
            for r in rates]

    def statuses(self, vals: list[int], blocker: int, status_read: bool,
                 amounts: Sequence[int] = NOTHING) -> list[LimitStatus]:
        """The limits of a reply; ``amounts`` is the request's amount vector (METRIC_ORDER)."""
        out: list[LimitStatus] = []
        # an admitted reservation reports taken only (see the module docstring)
        split = status_read or vals[0] != 1
        pos = 3
        j = 0
        for scope, metric, period, mode, units, resets, origin, soft, mi in self.budgets:
            j += 1
            u, r, carry = vals[pos], vals[pos + 1], vals[pos + 2]
            pos += 3
            used: int | None
            reserved: int | None
            if u == -1:  # fast path: the script read only used + reserved, in r
                taken, used, reserved = r, None, None
            else:
                taken = u + r
                used, reserved = (u, r) if split else (None, None)
            eff = units + carry
            if j == blocker:
                state: LimitState = "blocked"
            elif soft:
                state = "soft_exceeded" if taken > eff else "ok"
            elif status_read and taken >= eff:
                state = "blocked"  # exhausted: the next request would be refused
            else:
                state = "ok"
            out.append(LimitStatus(scope, "budget", metric, period, mode,  # type: ignore[arg-type]
                                   eff, taken, used, reserved, carry, resets, state, origin,
                                   amounts[mi], None))
        for scope, metric, period, rate, burst, interval, origin, mi in self.rates:
            j += 1
            ahead_us = vals[pos]
            pos += 1
            taken = min(burst, math.ceil(ahead_us / interval)) if ahead_us > 0 else 0
            # a full bucket in a status read: the next request would wait (as for budgets)
            full = j == blocker or (status_read and taken >= burst)
            out.append(LimitStatus(scope, "rate", metric, period, "hard", rate, taken,
                                   taken if split else None, 0 if split else None, 0, None,
                                   "blocked" if full else "ok", origin, amounts[mi], burst))
        return out


def decision(subject: Subject, reservation: Reservation | None, reader: ReplyReader,
             now_ms: int, reply: Any, status_read: bool,
             amounts: Sequence[int] = NOTHING) -> Decision:
    """The decision of a check (or status read) reply; see ``lua/check.lua``."""
    vals = [int(v) for v in reply]
    if vals[0] == -5:
        assert reservation is not None
        raise ReservationExists(
            f"reservation id {reservation.id!r} is already in use (a check with it was made; "
            "commit or release that reservation, or check under a new id)")
    allowed = vals[0] == 1
    blocker = vals[1]
    statuses = reader.statuses(vals, blocker, status_read, amounts)
    if allowed:
        return Decision(True, subject, reservation, tuple(statuses))
    blocked_by = statuses[blocker - 1] if blocker > 0 else None
    retry_after: float | None = None
    if blocked_by is not None:
        if blocked_by.kind == "rate":
            retry_after = vals[2] / 1_000_000
        elif blocked_by.resets_at is not None:
            retry_after = max(0.0, blocked_by.resets_at.timestamp() - now_ms / 1000)
    return Decision(
        allowed=False,
        subject=subject,
        reservation=None,
        limits=tuple(statuses),
        blocked_by=blocked_by,
        retry_after=retry_after,
        reason=f"{blocked_by.kind}_exceeded" if blocked_by else "denied",
    )
