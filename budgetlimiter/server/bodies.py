"""Check bodies read without pydantic when their parts were seen before.

A ``POST /v1/check`` body is ``{"subject": {...}, "estimate": {...}}`` in the common case.
Agents send the same few subjects over and over, and often the same estimates; validating
each body with pydantic (and building its Subject and Usage) was a few microseconds per
request. Here the subject and the estimate are remembered *separately*, each by its exact
JSON value (a flat object of strings and integers: ``true`` and ``1.0`` are not integers
here, so they never pass for ``1``). A body whose subject was seen before and whose estimate
is new validates the estimate alone. Anything else — other fields (``ttl``,
``reservation_id``), nested or other-typed values, any value that fails validation — goes
through the request model as before, so bad input keeps its exact problem document and
nothing invalid is ever remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from ..subject import Subject
from ..usage import Usage
from . import models as m

if TYPE_CHECKING:
    from .app import Server

#: distinct subjects (and estimates) kept; a memo starts over when full
MAX_REMEMBERED = 10_000
_SHAPE = frozenset({"subject", "estimate"})
T = TypeVar("T")


def _key(obj: Any) -> tuple[tuple[str, Any], ...] | None:
    """The memo key of a flat JSON object of strings and integers, else None."""
    if type(obj) is not dict:
        return None
    for value in obj.values():
        kind = type(value)
        if kind is not str and kind is not int:
            return None
    return tuple(obj.items())


class CheckBodies:
    """Subjects and estimates of check bodies, validated once per distinct value."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._subjects: dict[Any, Subject] = {}
        self._estimates: dict[Any, Usage] = {}

    def read(self, data: Any) -> tuple[Subject, Usage] | None:
        """The subject and estimate of a plain check body, or None: validate it with the
        request model (a body with other fields, or whose parts do not validate alone)."""
        if type(data) is not dict or not data.keys() <= _SHAPE:
            return None
        subject = self._subject(data.get("subject"))
        if subject is None:
            return None
        if "estimate" not in data:
            return subject, self.server.usage(m.CheckRequest.model_fields["estimate"].default)
        usage = self._estimate(data["estimate"])
        return None if usage is None else (subject, usage)

    def _subject(self, raw: Any) -> Subject | None:
        return _remember(self._subjects, raw,
                         lambda: self.server.subject(m.SubjectIn.model_validate(raw)))

    def _estimate(self, raw: Any) -> Usage | None:
        return _remember(self._estimates, raw,
                         lambda: self.server.usage(m.UsageIn.model_validate(raw)))


def _remember(memo: dict[Any, T], raw: Any, build: Callable[[], T]) -> T | None:
    """``memo``'s value for the flat object ``raw``, built (validated) on its first sight;
    None when ``raw`` is not flat or fails validation (the full model words the problem)."""
    key = _key(raw)
    if key is None:
        return None
    found = memo.get(key)
    if found is None:
        try:
            found = build()
        except (ValidationError, ValueError):
            return None
        if len(memo) >= MAX_REMEMBERED:
            memo.clear()
        memo[key] = found
    return found
