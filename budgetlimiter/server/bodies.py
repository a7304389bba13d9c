"""Check bodies remembered by value: the subject and estimate of a ``POST /v1/check`` whose
body is just ``{"subject": {...}, "estimate": {...}}`` with plain values, validated once.

Agents send the same few subjects and estimates over and over; validating each body with
pydantic (and building its Subject and Usage) was a few microseconds per request. A body
seen before (same keys, same values of the same JSON types) is answered from here; any other
body (new values, other fields, nested or unhashable values) goes through the model as
before, so bad input keeps its exact problem document and nothing invalid is ever stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..subject import Subject
from ..usage import Usage
from . import models as m

if TYPE_CHECKING:
    from .app import Server

#: distinct bodies kept; the memo starts over when full (as the subject caches do)
MAX_BODIES = 10_000
_SHAPE = frozenset({"subject", "estimate"})
_NO_ESTIMATE: tuple[()] = ()


def _flat(obj: Any) -> tuple[tuple[str, type, Any], ...]:
    """A hashable key of a flat JSON object; the types are part of it (``true`` and ``1``
    hash alike but validate differently). Raises TypeError on anything else."""
    if type(obj) is not dict:
        raise TypeError("not an object")
    return tuple((k, type(v), v) for k, v in obj.items())


class CheckBodies:
    """Validated ``(Subject, Usage, CheckRequest)`` of check bodies, by value."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._seen: dict[Any, tuple[Subject, Usage, m.CheckRequest]] = {}

    def key(self, data: Any) -> Any:
        """The memo key of a parsed body, or None when it is not a plain subject+estimate."""
        if type(data) is not dict or not data.keys() <= _SHAPE:
            return None
        try:
            estimate = data.get("estimate")
            key = (_flat(data.get("subject")),
                   _NO_ESTIMATE if estimate is None and "estimate" not in data
                   else _flat(estimate))
            hash(key)
        except TypeError:
            return None
        return key

    def get(self, key: Any) -> tuple[Subject, Usage, m.CheckRequest] | None:
        return self._seen.get(key) if key is not None else None

    def remember(self, key: Any, req: m.CheckRequest) -> tuple[Subject, Usage]:
        """The Subject and Usage of a validated request (kept under ``key`` if it has one)."""
        subject, usage = self.server.subject(req.subject), self.server.usage(req.estimate)
        if key is not None:
            if len(self._seen) >= MAX_BODIES:
                self._seen.clear()
            self._seen[key] = (subject, usage, req)
        return subject, usage
