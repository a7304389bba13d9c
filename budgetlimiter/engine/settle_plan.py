"""Settle planning (commit, release, record) for the sans-I/O core.

A mixin of :class:`budgetlimiter.engine.planner.Core`: it builds the ``lua/settle.lua`` calls and reads
their replies. Split from ``core.py`` only to keep modules small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidId, InvalidInput, ReservationNotFound
from ..results import Reservation, SettleResult, SettleStatus, ThresholdCrossing
from ..subject import Subject, validate_id
from ..usage import METRIC_BY_CODE, Amounts, Usage
from .calls import ScriptCall

if TYPE_CHECKING:
    from ..policy import Policy
    from .keys import KeySpace
    from .planner import _Budget

_SETTLE_STATUS: dict[int, SettleStatus] = {1: "committed", 2: "duplicate", 3: "late"}


def validate_reservation_id(rid: object) -> str:
    """Reservation and request ids follow the same rules as scope ids."""
    try:
        return validate_id("reservation", rid)
    except InvalidId:
        raise


def _bytes_to_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SettlePlanner:
    """Plans commit, release and record calls; mixed into :class:`~budgetlimiter.engine.planner.Core`."""

    policy: Policy
    keys: KeySpace
    cluster: bool
    idempotency_ms: int

    def amounts(self, subject: Subject, usage: Usage) -> Amounts:
        raise NotImplementedError

    def _limits(self, subject: Subject, now_ms: int) -> tuple[list[_Budget], list[Any]]:
        raise NotImplementedError

    def _ledger(self, subject: Subject, now_ms: int) -> tuple[str, int]:
        raise NotImplementedError

    def _plan_lines(self, budgets: list[_Budget], amounts: Amounts) -> str:
        raise NotImplementedError

    def _settle(self, op: str, org: str, marker_key: str, rid: str, now_ms: int,
                fallback: str, ledger_exp: int, actual: Amounts | None,
                status_ok: SettleStatus) -> ScriptCall:
        ks = self.keys
        keys = [marker_key, ks.reservations_by_expiry(org), ks.dirty(org), ks.events(org)]
        if not self.cluster:
            keys.append(ks.dirty_orgs)
        vec = actual.as_list() if actual is not None else [0, 0, 0, 0, 0]
        args: list[str | int] = [
            now_ms, op, self.idempotency_ms, 1 if self.policy.strict else 0, org, fallback,
            ledger_exp, *vec,
        ]

        def parse(reply: Any) -> SettleResult:
            return self._parse_settle(rid, reply, actual, status_ok)

        return ScriptCall("settle", keys, args, parse, org)

    def plan_commit(self, reservation: Reservation, actual: Usage, now_ms: int) -> ScriptCall:
        """Replace a reservation's estimate by the actual usage (idempotent by id)."""
        if not isinstance(reservation, Reservation):
            raise InvalidInput("commit needs the Reservation returned by check()")
        amounts = self.amounts(reservation.subject, actual)
        subject = reservation.subject
        _, ledger_exp = self._ledger(subject, reservation.created_ms)
        return self._settle("commit", subject.org,
                            self.keys.reservation(subject.org, reservation.id), reservation.id,
                            now_ms, reservation.plan, ledger_exp, amounts, "committed")

    def plan_commit_by_id(self, org: str, reservation_id: str, actual: Amounts,
                          now_ms: int) -> ScriptCall:
        """Commit knowing only the id (sidecar): the plan stored in Redis is the only source."""
        validate_id("org", org)
        validate_reservation_id(reservation_id)
        ledger_exp = now_ms + (86400 + self.policy.retention_seconds) * 1000
        return self._settle("commit", org, self.keys.reservation(org, reservation_id),
                            reservation_id, now_ms, "", ledger_exp, actual, "committed")

    def plan_release(self, org: str, reservation_id: str, now_ms: int) -> ScriptCall:
        """Refund a reservation that will not be used (idempotent)."""
        validate_id("org", org)
        validate_reservation_id(reservation_id)
        return self._settle("release", org, self.keys.reservation(org, reservation_id),
                            reservation_id, now_ms, "", 0, None, "released")

    def plan_shrink(self, reservation: Reservation, keep: Amounts, expires_ms: int,
                    now_ms: int) -> ScriptCall:
        """Keep only ``keep`` of a live reservation's estimate (refund the rest now) and move
        its expiry to ``expires_ms``. Leases use it when they stop admitting while calls they
        admitted are still in flight."""
        org = reservation.subject.org
        ks = self.keys
        keys = [ks.reservation(org, reservation.id), ks.reservations_by_expiry(org),
                ks.dirty(org), ks.events(org)]
        args: list[str | int] = [now_ms, "shrink",
                                 max(1, expires_ms - now_ms) + self.idempotency_ms, 0, org, "",
                                 expires_ms, *keep.as_list()]
        rid = reservation.id

        def parse(reply: Any) -> SettleResult:
            code = int(reply[0])
            if code == -1:
                raise ReservationNotFound(f"reservation {rid!r} is unknown")
            return SettleResult(status="released" if code == 1 else _SETTLE_STATUS[code], id=rid)

        return ScriptCall("settle", keys, args, parse, org)

    def plan_record(self, subject: Subject, actual: Usage, now_ms: int,
                    request_id: str) -> ScriptCall:
        """Post-hoc usage without a reservation, idempotent by ``request_id``."""
        if not isinstance(subject, Subject):
            raise InvalidInput(
                f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
        validate_reservation_id(request_id)
        amounts = self.amounts(subject, actual)
        budgets, _ = self._limits(subject, now_ms)
        ledger, ledger_exp = self._ledger(subject, now_ms)
        zero = Amounts()
        plan = f"|0|{ledger}\n{self._plan_lines(budgets, zero)}"
        return self._settle("record", subject.org, self.keys.request(subject.org, request_id),
                            request_id, now_ms, plan, ledger_exp, amounts, "recorded")

    def _parse_settle(self, rid: str, reply: Any, actual: Amounts | None,
                      status_ok: SettleStatus) -> SettleResult:
        code = int(reply[0])
        if code == -1:
                raise ReservationNotFound(
                f"reservation {rid!r} is unknown (never made, settled more than the "
                "idempotency window ago, or lost with Redis data)"
            )
        status: SettleStatus = status_ok if code == 1 else _SETTLE_STATUS[code]
        crossings: list[ThresholdCrossing] = []
        rest = reply[3:]
        for i in range(0, len(rest), 5):
            key = _bytes_to_str(rest[i])
            ck = self.keys.parse_counter(key)
            crossings.append(ThresholdCrossing(
                scope=ck.scope, metric=METRIC_BY_CODE[_bytes_to_str(rest[i + 1])],
                period=ck.period.value, period_id=ck.period_id,
                threshold=int(rest[i + 2]), used=int(rest[i + 3]), limit=int(rest[i + 4]),
            ))
        return SettleResult(
            status=status, id=rid, actual=actual if code != 2 else None,
            overshoot=bool(int(reply[2])), thresholds=tuple(crossings),
        )

