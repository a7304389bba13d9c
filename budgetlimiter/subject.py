"""Subjects (who is asking) and scopes (the nodes that own counters).

A scope is a path of levels: ``org:acme/team:eng/user:alice/agent:copilot``. In the textual
form, ids that contain characters other than ``[A-Za-z0-9._~@+-]`` are percent-encoded, so
any id round-trips through the text form.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from .errors import InvalidId, UnknownScope

Level = Literal["org", "team", "user", "agent"]
LEVELS: tuple[Level, ...] = ("org", "team", "user", "agent")
MAX_ID_LENGTH = 256
_SAFE_TEXT = "._~@+-"


def validate_id(kind: str, value: object) -> str:
    """Return ``value`` if it is an acceptable id, else raise :class:`InvalidId`.

    Accepted: any non-empty string of at most 256 characters without control characters or
    lone surrogates. Everything else (braces, colons, slashes, spaces, any script) is allowed
    because keys never contain ids verbatim.
    """
    if not isinstance(value, str):
        raise InvalidId(f"{kind} id must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidId(f"{kind} id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(
            f"{kind} id is {len(value)} characters long; the maximum is {MAX_ID_LENGTH}")
    if value.isascii() and value.isprintable():  # (most ids: no control character possible)
        return value
    for ch in value:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            raise InvalidId(f"{kind} id contains control character U+{ord(ch):04X}")
        if cat == "Cs":
            raise InvalidId(f"{kind} id contains a lone surrogate U+{ord(ch):04X}")
    return value



def validate_reservation_id(rid: object) -> str:
    """Reservation and request ids follow the same rules as scope ids."""
    return validate_id("reservation", rid)

def _text(value: str) -> str:
    return quote(value, safe=_SAFE_TEXT)


@dataclass(frozen=True, slots=True)
class Scope:
    """One node of the hierarchy that can own limits and counters."""

    org: str
    team: str | None = None
    user: str | None = None
    agent: str | None = None

    def __post_init__(self) -> None:
        validate_id("org", self.org)
        for kind in ("team", "user", "agent"):
            value = getattr(self, kind)
            if value is not None:
                validate_id(kind, value)

    @property
    def level(self) -> Level:
        """The deepest level of this scope (``agent`` for agent scopes)."""
        if self.agent is not None:
            return "agent"
        if self.user is not None:
            return "user"
        if self.team is not None:
            return "team"
        return "org"

    @property
    def owner(self) -> Scope:
        """For an agent scope, the scope it hangs from; otherwise itself."""
        return Scope(self.org, self.team, self.user) if self.agent is not None else self

    def parts(self) -> list[tuple[Level, str]]:
        out: list[tuple[Level, str]] = [("org", self.org)]
        if self.team is not None:
            out.append(("team", self.team))
        if self.user is not None:
            out.append(("user", self.user))
        if self.agent is not None:
            out.append(("agent", self.agent))
        return out

    def __str__(self) -> str:
        return "/".join(f"{kind}:{_text(value)}" for kind, value in self.parts())

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse ``org:acme/team:eng/user:alice/agent:copilot`` (ids percent-encoded)."""
        if not isinstance(text, str) or not text:
            raise UnknownScope("scope must be a non-empty string like 'org:acme/team:eng'")
        values: dict[str, str] = {}
        order = {"org": 0, "team": 1, "user": 2, "agent": 3}
        last = -1
        for segment in text.split("/"):
            kind, sep, raw = segment.partition(":")
            if not sep or kind not in order:
                raise UnknownScope(
                    f"bad scope segment {segment[:60]!r} in {text[:120]!r}: expected "
                    "org:ID, team:ID, user:ID or agent:ID"
                )
            if order[kind] <= last:
                raise UnknownScope(f"scope levels out of order or repeated in {text[:120]!r}")
            last = order[kind]
            values[kind] = unquote(raw, errors="strict")
        if "org" not in values:
            raise UnknownScope(f"scope {text[:120]!r} does not start with org:ID")
        return cls(values["org"], values.get("team"), values.get("user"), values.get("agent"))


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: an org, optional team and user, and the agent being invoked."""

    org: str
    agent: str
    team: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        validate_id("org", self.org)
        validate_id("agent", self.agent)
        if self.team is not None:
            validate_id("team", self.team)
        if self.user is not None:
            validate_id("user", self.user)

    def owner_scopes(self) -> list[Scope]:
        """org, then team, then user (those present), without agent."""
        out = [Scope(self.org)]
        if self.team is not None:
            out.append(Scope(self.org, self.team))
        if self.user is not None:
            out.append(Scope(self.org, self.team, self.user))
        return out

    def scopes(self) -> list[Scope]:
        """Every scope this subject's usage counts against, outermost first; each owner scope
        is followed by its agent scope."""
        out: list[Scope] = []
        for owner in self.owner_scopes():
            out.append(owner)
            out.append(Scope(owner.org, owner.team, owner.user, self.agent))
        return out

    def __str__(self) -> str:
        return str(Scope(self.org, self.team, self.user, self.agent))
