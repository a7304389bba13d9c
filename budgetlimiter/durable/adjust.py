"""Audited operator adjustments: one number on the live counters, in SQL, in reports and in
restores.

* **Affected scopes.** An adjustment of scope S counts wherever a usage of S's subjects counts:
  the chain org → team → user of S (each also with S's agent when S names one), restricted
  to the scopes with a day, week or month limit on the metric (only those have counters the
  durable record can rebuild). A refund of a user's spend is a refund for the team and the
  org too. No such scope: :class:`InvalidInput`.
* **Clamping.** A credit never takes a counter below zero: the applied amount is
  ``max(requested, -min(used))`` over the affected counters, and that same amount moves
  every one of them, atomically (``lua/adjust.lua``). SQL records the applied amount (and
  the requested one, for the audit), so a restore rebuilds exactly what the counters hold.
* **Idempotent by id, Redis first.** The counters change first, together with a marker
  ``P:{org}:j:<id>`` holding the applied amount; then the SQL row is written (upsert by id).
  Redis down: an error, nothing written anywhere. SQL failing after that:
  :class:`AdjustmentIncomplete` names the id; retrying with it finds the marker ("duplicate",
  the same applied amount, counters untouched) and writes the row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..engine.calls import ScriptCall
from ..errors import AdjustmentConflict, AdjustmentIncomplete, InvalidAmount, InvalidInput
from ..policy.periods import PeriodKind, window_at
from ..subject import Scope, Subject, validate_id
from ..usage import MAX_AMOUNT, Metric, micros_to_usd
from .store.admin import AuditEntry
from .store.records import Adjustment

__all__ = ["ADJUSTED_PERIODS", "AdjustReply", "AdjustmentOutcome", "affected_scopes",
           "apply_adjustment", "plan_adjust"]


@dataclass(frozen=True, slots=True)
class AdjustReply:
    """What ``lua/adjust.lua`` answered.

    ``status``: ``applied``; ``duplicate`` (this id was applied before: ``applied`` and
    ``at_ms`` are that application's, nothing changed now); ``conflict`` (the id was used for
    another operation: nothing changed)."""

    status: str
    applied: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class AdjustmentOutcome:
    """The recorded adjustment and whether this call applied it (``applied``) or found it
    already applied (``duplicate``)."""

    adjustment: Adjustment
    status: str


def affected_scopes(scope: Scope) -> list[Scope]:
    """Every scope a usage of ``scope``'s subjects counts in, outermost first: org, team,
    user (those ``scope`` names), each followed by its agent scope if ``scope`` has an agent.
    Policy-independent: callers restrict it to the scopes that have counters."""
    owners = [Scope(scope.org)]
    if scope.team is not None:
        owners.append(Scope(scope.org, scope.team))
    if scope.user is not None:
        owners.append(Scope(scope.org, scope.team, scope.user))
    out: list[Scope] = []
    for owner in owners:
        out.append(owner)
        if scope.agent is not None:
            out.append(Scope(owner.org, owner.team, owner.user, scope.agent))
    return out


#: Budgets an adjustment moves. Not minute and hour budgets: the durable record is daily (an
#: adjustment is dated by its day, restores rebuild days, weeks and months only), and a short
#: window's usage, nearly always small, would otherwise cap every credit at once.
ADJUSTED_PERIODS = (PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH)


def _counters(core: Any, scope: Scope, metric: Metric, now_ms: int) -> list[tuple[str, int]]:
    """(key, expire-at ms) of the current day/week/month counters of ``metric`` in the
    affected scopes that have such a limit on it."""
    policy = core.policy
    tz, ws = policy.timezone_for(scope.org), policy.week_start_index()
    retention = policy.retention_seconds * 1000
    chain = set(affected_scopes(scope))
    # the limits of org/team/user scopes do not depend on the agent: any id resolves them
    # (its own agent scopes are not in the chain unless it is the adjusted scope's agent)
    subject = Subject(scope.org, scope.agent or "-", team=scope.team, user=scope.user)
    out: list[tuple[str, int]] = []
    for sl in policy.resolve(subject).scopes:
        if sl.scope not in chain:
            continue
        for spec in sl.limits:
            if spec.metric is metric and spec.period in ADJUSTED_PERIODS:
                w = window_at(spec.period, now_ms, tz, ws)
                out.append((core.keys.counter(sl.scope, w), w.end_ms + retention))
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _operation(scope: Scope, metric: Metric, amount: int) -> str:
    """What a retry under the same id must repeat (compared in Lua)."""
    return f"{scope}\t{metric.code}\t{amount}"


def plan_adjust(core: Any, scope: Scope, metric: Metric, amount: int, adjustment_id: str,
                now_ms: int) -> ScriptCall:
    """The ``adjust`` script call (the one place that knows ``lua/adjust.lua``'s layout).

    Raises :class:`InvalidInput` (before any I/O) when ``amount`` is not an integer within
    range or when no affected scope has a limit on ``metric``."""
    if isinstance(amount, bool) or not isinstance(amount, int) or abs(amount) > MAX_AMOUNT:
        raise InvalidAmount(f"adjustment amount must be an integer of at most {MAX_AMOUNT} "
                            f"in absolute value, got {amount!r}")
    counters = _counters(core, scope, metric, now_ms)
    if not counters:
        raise InvalidInput(f"nothing to adjust: neither {scope} nor a scope above it has a "
                           f"day, week or month limit on {metric.value}")
    # The marker must outlive any retry (idempotency window) and the counters it changed:
    # while they exist, applying the same id again would count twice.
    ttl_ms = max([core.policy.idempotency_seconds * 1000,
                  *(exp - now_ms for _, exp in counters)])
    keys = [core.keys.adjustment(scope.org, adjustment_id), *(k for k, _ in counters)]
    args: list[str | int] = [now_ms, metric.code, amount, _operation(scope, metric, amount),
                             ttl_ms, *(exp for _, exp in counters)]

    def parse(reply: Any) -> AdjustReply:
        return AdjustReply(_s(reply[0]), int(_s(reply[1])), int(_s(reply[2])))

    return ScriptCall("adjust", keys, args, parse, scope.org)


def apply_adjustment(limiter: Any, store: Any, scope: Scope, metric: Metric, units: int,
                     who: str, why: str, *, adjustment_id: str | None = None
                     ) -> AdjustmentOutcome:
    """Apply a credit (``units`` < 0) or debit of ``scope``'s current-period ``metric`` usage
    to the live counters, then record it in ``store``; see the module docstring.

    ``adjustment_id`` makes a retry safe (generated when omitted). Errors: bad input and an
    id reused for another adjustment raise :class:`InvalidInput` (nothing written); Redis
    unreachable raises the connection error (nothing written); SQL failing after Redis
    applied it raises :class:`AdjustmentIncomplete` naming the id to retry with."""
    adj_id = ("adj_" + uuid.uuid4().hex if adjustment_id is None
              else validate_id("adjustment", adjustment_id))
    if not isinstance(who, str) or not isinstance(why, str) or not why.strip():
        raise InvalidInput("an adjustment needs who (a string) and why (a non-empty reason)")
    core = limiter.engine.planners.core  # the policy in force, one object for the whole call
    call = plan_adjust(core, scope, metric, units, adj_id, limiter.clock())
    recorded = store.adjustment(adj_id)
    if recorded is not None:  # a retry of a complete adjustment: its marker may be gone
        if (recorded.scope, recorded.metric, recorded.requested) != (str(scope), metric.value,
                                                                     units):
            raise AdjustmentConflict(f"adjustment id {adj_id!r} was already used for another "
                                     f"adjustment ({recorded.metric} {recorded.requested} of "
                                     f"{recorded.scope})")
        return AdjustmentOutcome(recorded, "duplicate")
    reply: AdjustReply = limiter.execute(call)  # one script call; Redis first, idempotent
    if reply.status == "conflict":
        raise AdjustmentConflict(f"adjustment id {adj_id!r} was already used for a different "
                                 "adjustment of this org")
    tz = core.policy.timezone_for(scope.org)
    day = datetime.fromtimestamp(reply.at_ms / 1000, tz).date().isoformat()
    adj = Adjustment(org=scope.org, scope=str(scope), metric=metric.value,
                     amount=reply.applied, day=day, who=who, why=why, at_ms=reply.at_ms,
                     id=adj_id, requested=units)
    def shown(n: int) -> str:
        return str(micros_to_usd(n)) if metric is Metric.COST else str(n)

    audit = AuditEntry(who=who, action="adjustment", org=scope.org, scope=str(scope),
                       before=[f"{metric.value} requested {shown(units)}"],
                       after=[f"{metric.value} applied {shown(reply.applied)} on {day} "
                              f"(id {adj_id})"], why=why)
    try:
        store.add_adjustment(adj, audit)
    except AdjustmentConflict:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AdjustmentIncomplete(
            f"adjustment {adj_id} is applied to the live counters but not recorded in the "
            f"database ({first}); retry with the same id to record it", adj_id) from exc
    return AdjustmentOutcome(adj, reply.status)
