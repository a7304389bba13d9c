"""The formats of ids, scopes and query parameters: one definition that both the OpenAPI
document publishes and the handlers enforce, so that the document is exact (every request it
calls valid is accepted, every other one is refused with a ``422`` problem naming the field).

Ids are what :func:`budgetlimiter.subject.validate_id` accepts: 1 to 256 characters, no control
characters (U+0000-U+001F, U+007F-U+009F) and no lone surrogates. A scope is its text form,
``org:ID[/team:ID][/user:ID][/agent:ID]`` with each ID percent-encoded as
:class:`~budgetlimiter.subject.Scope` writes it: characters other than ``/`` and ``%`` may
stand as they are, the others as ``%XX`` escapes of their UTF-8 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .problems import Problem

MAX_ID = 256
#: no control character (the pattern of every id; lone surrogates are refused as well)
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
ID_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID,
                             "pattern": ID_PATTERN}

_H = "[0-9A-Fa-f]"
_T = f"%[89ABab]{_H}"  # a UTF-8 continuation byte, 80-BF
#: one character of an id in a scope's text: as it is, or the %XX escapes of its UTF-8 bytes
#: (printable ASCII, or a well-formed sequence of a printable non-ASCII code point)
_CHAR = ("(?:[^/%\\u0000-\\u001f\\u007f-\\u009f]"
         f"|%(?:[2-6]{_H}|7[0-9A-Ea-e])"
         f"|%[Cc]2%[ABab]{_H}"
         f"|%(?:[Cc][3-9A-Fa-f]|[Dd]{_H}){_T}"
         f"|%[Ee]0%[ABab]{_H}{_T}"
         f"|%[Ee][1-9A-Ca-cEeFf]{_T}{_T}"
         f"|%[Ee][Dd]%[89]{_H}{_T}"
         f"|%[Ff]0%[9ABab]{_H}{_T}{_T}"
         f"|%[Ff][1-3]{_T}{_T}{_T}"
         f"|%[Ff]4%8{_H}{_T}{_T})")
_ID = f"{_CHAR}{{1,{MAX_ID}}}"
SCOPE_PATTERN = f"^org:{_ID}(?:/team:{_ID})?(?:/user:{_ID})?(?:/agent:{_ID})?$"
SCOPE_SCHEMA: dict[str, Any] = {"type": "string", "pattern": SCOPE_PATTERN}
SCOPE_HELP = ("Scope text: org:ID[/team:ID][/user:ID][/agent:ID], each ID as in the `scope` "
              "fields of the answers (percent-encoded UTF-8 except letters, digits and "
              "._~@+-; other characters but / and % may also stand as they are).")
DATE_SCHEMA: dict[str, Any] = {"type": "string", "format": "date"}

_ID_RE = re.compile("[\\u0000-\\u001f\\u007f-\\u009f\\ud800-\\udfff]")
_SCOPE_RE = re.compile(SCOPE_PATTERN)
_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def id_error(value: str) -> str | None:
    """Why ``value`` is not an id (``None`` if it is one)."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID:
        return f"is {len(value)} characters long; the maximum is {MAX_ID}"
    bad = _ID_RE.search(value)
    if bad is not None:
        kind = "a lone surrogate" if bad.group() >= "\ud800" else "a control character"
        return f"contains {kind} U+{ord(bad.group()):04X}"
    return None


def scope_error(value: str) -> str | None:
    """Why ``value`` is not scope text (``None`` if it is)."""
    if _SCOPE_RE.fullmatch(value) is None:
        return ("must be scope text like org:acme/team:eng (org, then team, user, agent in "
                "this order; ids of 1-256 characters, no control characters, '/' and '%' "
                "only as %XX escapes of UTF-8)")
    return None


@dataclass(frozen=True)
class Param:
    """One query parameter: its OpenAPI description and its check."""

    name: str
    description: str
    required: bool = False
    schema: dict[str, Any] = field(default_factory=lambda: dict(ID_SCHEMA))

    def openapi(self) -> dict[str, Any]:
        return {"name": self.name, "in": "query", "required": self.required,
                "description": self.description, "schema": self.schema}

    def error(self, value: str) -> tuple[str, str] | None:
        """(problem code, why) when ``value`` does not conform, else ``None``."""
        schema = self.schema
        if "enum" in schema:
            if value not in schema["enum"]:
                return "invalid_input", "must be one of " + ", ".join(schema["enum"])
            return None
        if schema is SCOPE_SCHEMA or schema.get("pattern") == SCOPE_PATTERN:
            why = scope_error(value)
            return None if why is None else ("invalid_input", why)
        if schema.get("format") == "date":
            try:
                if _DATE_RE.fullmatch(value) is not None:
                    date.fromisoformat(value)
                    return None
            except ValueError:
                pass
            return "invalid_input", "must be a date like 2026-03-01"
        pattern = schema.get("pattern")
        if pattern is not None and pattern != ID_PATTERN:  # a free-form text with a pattern
            if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9):
                return "invalid_input", (f"must be {schema.get('minLength', 0)} to "
                                         f"{schema.get('maxLength')} characters")
            if re.search(pattern, value) is None:
                return "invalid_input", f"must match {pattern}"
            return None
        why = id_error(value)
        return None if why is None else ("invalid_id", why)


def read_query(params: tuple[Param, ...], query: Any) -> dict[str, str]:
    """The declared parameters present in ``query`` (a Starlette ``QueryParams``), checked:
    a missing required one, a repeated one or one that does not conform is a ``422`` problem
    naming it. Parameters that are not declared are ignored."""
    out: dict[str, str] = {}
    for p in params:
        values = query.getlist(p.name)
        if not values:
            if p.required:
                raise Problem("invalid_input", f"{p.name}: a required query parameter",
                              errors=[{"loc": ["query", p.name], "msg": "required",
                                       "type": "missing"}])
            continue
        if len(values) > 1:
            raise Problem("invalid_input", f"{p.name}: given {len(values)} times",
                          errors=[{"loc": ["query", p.name], "msg": "given more than once",
                                   "type": "repeated"}])
        found = p.error(values[0])
        if found is not None:
            code, why = found
            raise Problem(code, f"{p.name}: {why}",
                          errors=[{"loc": ["query", p.name], "msg": why, "type": code}])
        out[p.name] = values[0]
    return out


ORG = Param("org", "Org id.", required=True)
USAGE_PARAMS = (
    ORG,
    Param("by", "Report kind.", required=True,
          schema={"type": "string", "enum": ["agent", "team", "user", "trend"]}),
    Param("team", "by=user: only this team's users (ignored otherwise)."),
    Param("scope", "by=trend: the scope (default org:<org>); it must be of `org` (409 "
          "`org_mismatch` otherwise). " + SCOPE_HELP, schema=SCOPE_SCHEMA),
    Param("metric", "by=trend: the metric (default cost).",
          schema={"type": "string", "enum": ["invocations", "input_tokens", "output_tokens",
                                             "total_tokens", "cost"]}),
    Param("granularity", "by=trend: day (default), week or month.",
          schema={"type": "string", "enum": ["day", "week", "month"]}),
    Param("from", "First day (default: 30 days before `to`). A `from` after `to` is an empty "
          "range; a trend reaches back at most 3,700 days before `to` (the answer's `from` "
          "says where it starts).", schema=DATE_SCHEMA),
    Param("to", "Last day (default: today, UTC).", schema=DATE_SCHEMA),
)
EFFECTIVE_PARAMS = (ORG, Param("agent", "Agent id.", required=True), Param("team", "Team id."),
                    Param("user", "User id."))
TREE_PARAMS = (ORG,)
CHECK_PARAMS = (
    Param("http_status", "`true`: a blocked check answers 429 (with Retry-After and "
          "RateLimit headers) instead of 200 with allowed=false; `false` (the default) does "
          "not, unless the Prefer header asks for it.",
          schema={"type": "string", "enum": ["true", "false"]}),
)
