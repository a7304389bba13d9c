"""Typed errors. Every error raised for bad input is raised before any I/O."""

from __future__ import annotations


class BudgetLimiterError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInput(BudgetLimiterError, ValueError):
    """A caller passed something that cannot be accepted (nothing was changed)."""


class InvalidId(InvalidInput):
    """An org/team/user/agent id is empty, too long or not encodable."""


class InvalidAmount(InvalidInput):
    """A usage amount is negative, NaN, infinite, fractional where it must not be, or too big."""


class UnknownScope(InvalidInput):
    """A scope string could not be parsed or names an unknown level."""


class UnknownAgent(InvalidInput):
    """The agent has no pricing and the policy declares no default pricing."""


class PolicyError(BudgetLimiterError, ValueError):
    """A policy file or object is invalid. The message names file, line, path and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.path = path
        self.field = field


class ReservationNotFound(BudgetLimiterError, LookupError):
    """A commit or release named a reservation Redis does not know (never made, or forgotten)."""


class ReservationExists(InvalidInput):
    """A check under a caller's reservation id that is already in use (nothing reserved): a
    second reservation under one id would overwrite the first, whose estimate would then never
    be refunded. A check retried after a lost reply lands here: commit or release that id."""


class ReservationSettled(BudgetLimiterError):
    """A commit of a released reservation, or a release of a committed one: nothing changed.

    ``settled_as`` says how the reservation was settled before (``"released"`` or
    ``"committed"``). A commit after a release never answers "duplicate": its usage was not
    counted, and the caller must know (record it instead).
    """

    def __init__(self, message: str, *, settled_as: str) -> None:
        super().__init__(message)
        self.settled_as = settled_as


class BackendUnavailable(BudgetLimiterError, ConnectionError):
    """Redis could not be reached within the configured timeout."""


class ClockSkew(BudgetLimiterError):
    """Redis kept judging this host's clock off by more than ``max_clock_skew`` even after
    the client learned the offset: a clock that jumps, or a process so overloaded that its
    readings arrive late. Nothing was decided (the caller may retry); never bad input."""


class BackendRejected(BudgetLimiterError):
    """Redis refused the client: wrong password, ACL user without the needed permissions.

    A configuration error, never treated as an outage: even under ``fail_open`` it is raised,
    so that a revoked credential cannot switch enforcement off.
    """


class BudgetExceeded(BudgetLimiterError):
    """Raised by guards when a check is denied; carries the decision."""

    def __init__(self, decision: object) -> None:
        super().__init__(str(decision))
        self.decision = decision


class AdjustmentConflict(InvalidInput):
    """An adjustment id was already used for a different adjustment (nothing was changed)."""


class AdjustmentIncomplete(BudgetLimiterError):
    """An adjustment was applied to the live counters but its audit row could not be written.

    Retrying with the same ``adjustment_id`` writes the row and does not apply it twice.
    """

    def __init__(self, message: str, adjustment_id: str) -> None:
        super().__init__(message)
        self.adjustment_id = adjustment_id


class PreconditionFailed(BudgetLimiterError):
    """A change named the state it expected (``If-Match``) and the state had changed since:
    nothing was written."""


class NothingToRemove(InvalidInput, LookupError):
    """A removal named a limit, rate or override that is not in effect: nothing was written."""


class OverridePublishFailed(BudgetLimiterError):
    """An override version was stored in SQL but could not be published to Redis; ``version``
    is in force in the record and is published again when Redis answers (a sidecar with the
    database does it within a second; ``budgetlimiter restore`` does it on demand)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version
