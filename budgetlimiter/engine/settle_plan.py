"""The layout of ``lua/settle.lua``: commit, release, record and shrink calls and their replies.

This module is the only place that knows the settle script's KEYS, ARGV and reply; it plans
from a :class:`~budgetlimiter.engine.planner.Core` (limits, amounts, keys) and does no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, ReservationNotFound, ReservationSettled
from ..results import Reservation, SettleResult, SettleStatus, ThresholdCrossing
from ..subject import Subject, validate_id, validate_reservation_id
from ..usage import METRIC_BY_CODE, Amounts, Usage
from .calls import ScriptCall

if TYPE_CHECKING:
    from .planner import Core

#: reply status of settle.lua -> result status (4: counted from the fallback plan)
_SETTLE_STATUS: dict[int, SettleStatus] = {1: "committed", 2: "duplicate", 3: "late",
                                           4: "committed"}
#: reply status meaning "the caller's clock is off" (see script_now in lua/lib.lua)
SKEWED = -2


def _bytes_to_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SettlePlanner:
    """Plans the settle script's calls for one :class:`Core` (one policy and key space)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def _call(self, op: str, org: str, marker_key: str, rid: str, now_ms: int,
              fallback: str, ledger_exp: int, actual: Amounts | None,
              status_ok: SettleStatus, status_fallback: SettleStatus | None = None
              ) -> ScriptCall:
        core = self.core
        ks = core.keys
        keys = [marker_key, ks.reservations_by_expiry(org), ks.dirty(org), ks.events(org)]
        if not core.cluster:
            keys.append(ks.dirty_orgs)
        vec = actual.as_list() if actual is not None else [0, 0, 0, 0, 0]
        args: list[str | int] = [
            now_ms, op, core.idempotency_ms, 1 if core.policy.strict else 0, org, fallback,
            ledger_exp, *vec, core.clock_tolerance_ms,
        ]

        def parse(reply: Any) -> SettleResult:
            return self.parse(rid, reply, actual, status_ok, status_fallback or status_ok)

        return ScriptCall("settle", keys, args, parse, org)

    def plan_commit(self, reservation: Reservation, actual: Usage, now_ms: int) -> ScriptCall:
        """Replace a reservation's estimate by the actual usage (idempotent by id). The
        reservation carries its plan, so the usage still counts if Redis lost it."""
        if not isinstance(reservation, Reservation):
            raise InvalidInput("commit needs the Reservation returned by check()")
        core = self.core
        amounts = core.amounts(reservation.subject, actual)
        subject = reservation.subject
        _, ledger_exp = core.ledger(subject, reservation.created_ms)
        return self._call("commit", subject.org,
                          core.keys.reservation(subject.org, reservation.id), reservation.id,
                          now_ms, reservation.plan, ledger_exp, amounts, "committed")

    def plan_commit_by_id(self, org: str, reservation_id: str, actual: Amounts,
                          now_ms: int, subject: Subject | None = None) -> ScriptCall:
        """Commit knowing only the id (the sidecar). With ``subject``, a reservation Redis no
        longer knows (expired and cleaned up, or lost with Redis data) is still counted, once:
        as a record of ``subject`` under the reservation id (result status ``recorded``)."""
        validate_id("org", org)
        validate_reservation_id(reservation_id)
        core = self.core
        fallback = ""
        if subject is not None:
            if subject.org != org:
                raise InvalidInput("subject.org must equal org")
            fallback = self._record_plan(subject, now_ms)
        _, ledger_exp = core.ledger(subject, now_ms) if subject is not None else (
            "", now_ms + (86400 + core.policy.retention_seconds) * 1000)
        return self._call("commit", org, core.keys.reservation(org, reservation_id),
                          reservation_id, now_ms, fallback, ledger_exp, actual, "committed",
                          "recorded")

    def plan_release(self, org: str, reservation_id: str, now_ms: int) -> ScriptCall:
        """Refund a reservation that will not be used (idempotent)."""
        validate_id("org", org)
        validate_reservation_id(reservation_id)
        return self._call("release", org, self.core.keys.reservation(org, reservation_id),
                          reservation_id, now_ms, "", 0, None, "released")

    def plan_shrink(self, reservation: Reservation, keep: Amounts, expires_ms: int,
                    now_ms: int) -> ScriptCall:
        """Keep only ``keep`` of a live reservation's estimate (refund the rest now) and move
        its expiry to ``expires_ms``. Leases use it when they stop admitting while calls they
        admitted are still in flight."""
        core = self.core
        org = reservation.subject.org
        ks = core.keys
        keys = [ks.reservation(org, reservation.id), ks.reservations_by_expiry(org),
                ks.dirty(org), ks.events(org)]
        args: list[str | int] = [now_ms, "shrink",
                                 max(1, expires_ms - now_ms) + core.idempotency_ms, 0, org, "",
                                 expires_ms, *keep.as_list(), core.clock_tolerance_ms]
        rid = reservation.id

        def parse(reply: Any) -> SettleResult:
            code = int(reply[0])
            if code == -1:
                raise ReservationNotFound(f"reservation {rid!r} is unknown")
            return SettleResult(status="released" if code == 1 else _SETTLE_STATUS[code], id=rid)

        return ScriptCall("settle", keys, args, parse, org)

    def _record_plan(self, subject: Subject, now_ms: int) -> str:
        core = self.core
        budgets, _ = core.limits(subject, now_ms)
        ledger, _ = core.ledger(subject, now_ms)
        return f"|0|{ledger}\n{core.plan_lines(budgets, Amounts())}"

    def plan_record(self, subject: Subject, actual: Usage, now_ms: int,
                    request_id: str) -> ScriptCall:
        """Post-hoc usage without a reservation, idempotent by ``request_id``."""
        if not isinstance(subject, Subject):
            raise InvalidInput(
                f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
        validate_reservation_id(request_id)
        core = self.core
        amounts = core.amounts(subject, actual)
        _, ledger_exp = core.ledger(subject, now_ms)
        return self._call("record", subject.org, core.keys.request(subject.org, request_id),
                          request_id, now_ms, self._record_plan(subject, now_ms), ledger_exp,
                          amounts, "recorded")

    def parse(self, rid: str, reply: Any, actual: Amounts | None,
              status_ok: SettleStatus, status_fallback: SettleStatus) -> SettleResult:
        """The result of a settle reply (see the header of ``lua/settle.lua``)."""
        code = int(reply[0])
        if code == -1:
            raise ReservationNotFound(
                f"reservation {rid!r} is unknown (never made, settled more than the "
                "idempotency window ago, or lost with Redis data)"
            )
        if code == -3:
            raise ReservationSettled(
                f"reservation {rid!r} was released: its usage was not counted by this commit "
                "(record the usage instead)", settled_as="released")
        if code == -4:
            raise ReservationSettled(
                f"reservation {rid!r} was committed; a release changes nothing",
                settled_as="committed")
        if code == 1:
            status = status_ok
        elif code == 4:
            status = status_fallback
        else:
            status = _SETTLE_STATUS[code]
        crossings: list[ThresholdCrossing] = []
        rest = reply[3:]
        keys = self.core.keys
        for i in range(0, len(rest), 5):
            ck = keys.parse_counter(_bytes_to_str(rest[i]))
            crossings.append(ThresholdCrossing(
                scope=ck.scope, metric=METRIC_BY_CODE[_bytes_to_str(rest[i + 1])],
                period=ck.period.value, period_id=ck.period_id,
                threshold=int(rest[i + 2]), used=int(rest[i + 3]), limit=int(rest[i + 4]),
            ))
        return SettleResult(
            status=status, id=rid, actual=actual if code != 2 else None,
            overshoot=bool(int(reply[2])), thresholds=tuple(crossings),
        )


def dirty_follow_up(call: ScriptCall, reply: Any, cluster: bool) -> bool:
    """On Redis Cluster the settle script cannot add the org to the global dirty set (another
    slot); this says whether the client must."""
    return cluster and int(reply[0]) in (1, 3, 4) and int(reply[1]) == 1
