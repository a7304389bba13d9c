"""RFC 9457 problem details (``application/problem+json``) with a stable ``code`` member.

Every error response of the sidecar is a problem document::

    {"type": "urn:budgetlimiter:problem:invalid_input", "title": "Invalid input",
     "status": 422, "code": "invalid_input", "detail": "...", "request_id": "..."}

Clients branch on ``code`` (stable), never on ``title`` or ``detail`` (prose).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

from ..errors import (
    BackendRejected,
    BackendUnavailable,
    BudgetLimiterError,
    ClockSkew,
    InvalidId,
    InvalidInput,
    NothingToRemove,
    PolicyError,
    PreconditionFailed,
    ReservationExists,
    ReservationNotFound,
    ReservationSettled,
    UnknownAgent,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:budgetlimiter:problem:"

#: code -> (HTTP status, title). Codes are part of the API and never change meaning.
CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "Malformed JSON body"),
    "invalid_input": (422, "Invalid input"),
    "invalid_id": (422, "Invalid id"),
    "unknown_agent": (422, "Unknown agent"),
    "unauthorized": (401, "Missing or invalid bearer token"),
    "forbidden": (403, "Token scope does not allow this operation"),
    "not_found": (404, "Not found"),
    "reservation_not_found": (404, "Reservation not found"),
    "reservation_released": (409, "Reservation already released"),
    "reservation_exists": (409, "Reservation id already in use"),
    "reservation_committed": (409, "Reservation already committed"),
    "org_mismatch": (409, "The request names two different orgs"),
    "method_not_allowed": (405, "Method not allowed"),
    "precondition_failed": (412, "The resource changed since it was read (If-Match)"),
    "payload_too_large": (413, "Request body too large"),
    "budget_exceeded": (429, "Budget exceeded"),
    "rate_limited": (429, "Rate limit exceeded"),
    "backend_unavailable": (503, "Redis unavailable"),
    "store_unavailable": (503, "Durable store unavailable"),
    "internal_error": (500, "Internal error"),
}


class Problem(Exception):
    """An error to answer with a problem document; raise it from any handler."""

    def __init__(self, code: str, detail: str = "", *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or code)
        self.code = code
        self.status, self.title = CODES[code]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The problem document."""
        doc: dict[str, Any] = {
            "type": TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            doc["detail"] = self.detail
        if request_id:
            doc["request_id"] = request_id
        doc.update(self.extra)
        return doc

    def response(self, request_id: str | None = None) -> Response:
        """The HTTP response carrying this problem."""
        return problem_response(self.body(request_id), self.status, self.headers)


def dumps(data: Any) -> bytes:
    """JSON bytes: ASCII-only (so that lone surrogates in echoed input cannot break the
    encoding) and without NaN/Infinity."""
    return json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def problem_response(doc: dict[str, Any], status: int,
                     headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(doc), status_code=status, headers=headers,
                    media_type=PROBLEM_MEDIA_TYPE)


def from_library_error(exc: BaseException) -> Problem:
    """Map a library exception to its problem (unknown ones are internal errors)."""
    if isinstance(exc, ReservationNotFound):
        return Problem("reservation_not_found", str(exc))
    if isinstance(exc, ReservationExists):
        return Problem("reservation_exists", str(exc))
    if isinstance(exc, ReservationSettled):
        return Problem(f"reservation_{exc.settled_as}", str(exc))
    if isinstance(exc, UnknownAgent):
        return Problem("unknown_agent", str(exc))
    if isinstance(exc, InvalidId):
        return Problem("invalid_id", str(exc))
    if isinstance(exc, PreconditionFailed):
        return Problem("precondition_failed", str(exc))
    if isinstance(exc, NothingToRemove):
        return Problem("not_found", str(exc))
    if isinstance(exc, (InvalidInput, PolicyError)):
        return Problem("invalid_input", str(exc))
    if isinstance(exc, BackendUnavailable):
        return Problem("backend_unavailable", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, ClockSkew):  # not the caller's fault: nothing decided, retry
        return Problem("backend_unavailable", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, BackendRejected):
        return Problem("backend_unavailable", "redis rejected the sidecar's credentials")
    if isinstance(exc, BudgetLimiterError):
        return Problem("invalid_input", str(exc))
    return Problem("internal_error", "unexpected error; see the server log")


#: the sidecar's logger (the handlers' and the hot path's failures)
_log = logging.getLogger("budgetlimiter.server")


def problem_for(server: Any, exc: BaseException, rid: str) -> Problem:
    """The problem answering a failure of a handler (Redis errors are counted and logged,
    unexpected ones logged with their traceback)."""
    if isinstance(exc, Problem):
        return exc
    from ..engine.outage import UNAVAILABLE

    if isinstance(exc, UNAVAILABLE):
        server.metrics.redis_errors.inc()
        _log.warning("redis unavailable: %s", exc, extra={"request_id": rid})
        return Problem("backend_unavailable", "Redis did not answer in time",
                       headers={"Retry-After": "1"})
    if isinstance(exc, BudgetLimiterError):
        return from_library_error(exc)
    _log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
    return Problem("internal_error", "unexpected error; see the server log")
