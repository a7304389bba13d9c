"""A :class:`~budgetlimiter.Decision` → Envoy's ``RateLimitResponse`` (sans-I/O).

One status per descriptor, in request order. A descriptor reports the limit that binds among
the limits of the scopes it covers (:func:`~budgetlimiter.envoy.mapping.covered`): the one
that blocked the request, else the hard limit with the smallest share left (soft limits only
when there is no hard one). ``current_limit`` is that limit in its integer unit (micro-USD for
cost) per its period — every budget period and rate window has an exact Envoy unit (SECOND,
MINUTE, HOUR, DAY, WEEK, MONTH); ``limit_remaining`` and ``duration_until_reset`` follow it.
Both are ``uint32`` in the protocol and are capped at 4,294,967,295.

``response_headers_to_add`` carries draft-ietf-httpapi-ratelimit-headers fields for the limit
that binds the whole request (``RateLimit-Policy``, ``RateLimit``), plus ``Retry-After`` and
a JSON body when the request is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2

from ..results import Decision, LimitStatus
from ..subject import Scope
from .mapping import Call, covered

Response = rls_pb2.RateLimitResponse
_Unit = rls_pb2.RateLimitResponse.RateLimit
UNITS: dict[str, int] = {
    "minute": _Unit.MINUTE, "hour": _Unit.HOUR, "day": _Unit.DAY, "week": _Unit.WEEK,
    "month": _Unit.MONTH, "per second": _Unit.SECOND, "per minute": _Unit.MINUTE,
    "per hour": _Unit.HOUR,
}
#: nominal window in seconds (the ``w`` of RateLimit-Policy; a month counts 30 days)
WINDOW: dict[str, int] = {
    "minute": 60, "hour": 3600, "day": 86_400, "week": 604_800, "month": 2_592_000,
    "per second": 1, "per minute": 60, "per hour": 3600,
}
UINT32_MAX = 2**32 - 1
#: per scope / limit identity, computed once (scopes repeat from call to call)
_MEMO_SIZE = 50_000
_levels_memo: dict[Scope, tuple[str, ...]] = {}
_names: dict[tuple[Scope, str, str], str] = {}
_parts_memo: dict[tuple[Scope, Any, str, int], tuple[Any, Any, str]] = {}
_covers_memo: dict[tuple[Scope, frozenset[str]], bool] = {}


def _levels(status: LimitStatus) -> tuple[str, ...]:
    scope = status.scope
    levels = _levels_memo.get(scope)
    if levels is None:
        levels = tuple(level for level in ("team", "user", "agent")
                       if getattr(scope, level) is not None)
        if len(_levels_memo) >= _MEMO_SIZE:
            _levels_memo.clear()
        _levels_memo[scope] = levels
    return levels


def binding(limits: Sequence[LimitStatus]) -> LimitStatus | None:
    """The limit closest to refusing: hard limits first, then the smallest share left."""
    best: LimitStatus | None = None
    best_key = (True, 2.0)
    for s in limits:
        cap = s.capacity  # a rate limit's remaining is out of its burst
        key = (s.mode != "hard", s.remaining / cap if cap > 0 else 0.0)
        if key < best_key:
            best, best_key = s, key
    return best


def until_reset(status: LimitStatus, decision: Decision, now_ms: int) -> int:
    """Whole seconds until ``status`` frees up: its period end for a budget; for a rate limit
    the refusal's retry time, else the time the used part of the burst takes to drain at the
    rate (``limit`` per period)."""
    if status.kind == "rate":
        if decision.blocked_by is status and decision.retry_after is not None:
            return math.ceil(decision.retry_after)
        if status.limit <= 0:
            return 0
        return math.ceil(status.taken * WINDOW.get(status.period, 1) / status.limit)
    if status.resets_at is None:
        return 0
    return max(0, math.ceil(status.resets_at.timestamp() - now_ms / 1000))


def limit_name(status: LimitStatus) -> str:
    """``org:acme/team:eng|cost|day``: the limit's identity, printable ASCII."""
    key = (status.scope, status.metric.value, status.period)
    name = _names.get(key)
    if name is None:
        text = f"{status.scope}|{status.metric.value}|{status.period}"
        name = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
        if len(_names) >= _MEMO_SIZE:
            _names.clear()
        _names[key] = name
    return name


def _parts(limit: LimitStatus) -> tuple[Any, Any, str]:
    """The limit's ``current_limit`` message, ``RateLimit-Policy`` header and quoted name:
    the same for every call while the limit stays the same (copied into each response)."""
    key = (limit.scope, limit.metric, limit.period, limit.limit)
    parts = _parts_memo.get(key)
    if parts is None:
        name = limit_name(limit)
        quoted = _sf_string(name)
        parts = (_Unit(name=name, requests_per_unit=min(limit.limit, UINT32_MAX),
                       unit=UNITS.get(limit.period, _Unit.UNKNOWN)),
                 _header("RateLimit-Policy",
                         f"{quoted};q={limit.limit};w={WINDOW.get(limit.period, 1)}"),
                 quoted)
        if len(_parts_memo) >= _MEMO_SIZE:
            _parts_memo.clear()
        _parts_memo[key] = parts
    return parts


def _status(code: int, limit: LimitStatus | None, reset: int) -> Any:
    if limit is None:
        return Response.DescriptorStatus(code=code)
    return Response.DescriptorStatus(
        code=code, current_limit=_parts(limit)[0],
        limit_remaining=min(limit.remaining, UINT32_MAX),
        duration_until_reset=duration_pb2.Duration(seconds=reset))


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValue(key=key, value=value)


def _sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def headers(decision: Decision, limit: LimitStatus | None, now_ms: int,
            reset: int | None = None) -> list[Any]:
    """The draft RateLimit fields of ``limit``; ``Retry-After`` on a refusal. ``reset`` is
    :func:`until_reset` of ``limit`` when the caller has it already."""
    out = []
    if limit is not None:
        _, policy, quoted = _parts(limit)
        if reset is None:
            reset = until_reset(limit, decision, now_ms)
        out.append(policy)
        out.append(_header("RateLimit", f"{quoted};r={limit.remaining};t={reset}"))
    if not decision.allowed:
        retry = max(1, math.ceil(decision.retry_after or 1))
        out.append(_header("Retry-After", str(retry)))
        out.append(_header("content-type", "application/json"))
    return out


def refusal_body(decision: Decision) -> bytes:
    """The JSON body Envoy sends with its 429 (the sidecar's error vocabulary)."""
    b = decision.blocked_by
    if decision.degraded:
        kind = "backend_unavailable"
    elif b is not None and b.kind == "rate":
        kind = "rate_limited"
    else:
        kind = "budget_exceeded"
    doc: dict[str, Any] = {"type": kind, "message": str(decision),
                           "retry_after": decision.retry_after}
    if b is not None:
        doc["scope"] = str(b.scope)
        doc["limit"] = b.to_dict()
    return json.dumps({"error": doc}, separators=(",", ":")).encode()


def _covers(limit: LimitStatus, levels: frozenset[str]) -> bool:
    key = (limit.scope, levels)
    hit = _covers_memo.get(key)
    if hit is None:
        hit = covered(_levels(limit), levels)
        if len(_covers_memo) >= _MEMO_SIZE:
            _covers_memo.clear()
        _covers_memo[key] = hit
    return hit


def decision_response(decision: Decision, call: Call, now_ms: int) -> Any:
    """The ``RateLimitResponse`` of a request-time check."""
    limits = decision.limits
    blocked = decision.blocked_by
    allowed = decision.allowed
    over, ok = Response.OVER_LIMIT, Response.OK
    nobody_covers_blocker = blocked is not None and not any(
        _covers(blocked, levels) for levels in call.covers)
    whole = blocked if blocked is not None else binding(limits)
    resets: dict[int, int] = {}  # id(limit) -> until_reset, each computed once
    built: dict[tuple[int, int], Any] = {}  # (code, id(limit)) -> status (copied per use)
    statuses = []
    limit: LimitStatus | None
    for levels in call.covers:
        if blocked is not None and (nobody_covers_blocker or _covers(blocked, levels)):
            code, limit = over, blocked
        else:
            mine = [s for s in limits if _covers(s, levels)]
            code = ok if allowed else over if blocked is None else ok
            limit = (whole if len(mine) == len(limits) and blocked is None
                     else binding(mine))
        status = built.get((code, id(limit)))
        if status is None:
            reset = 0
            if limit is not None:
                reset = resets.get(id(limit), -1)
                if reset < 0:
                    reset = resets[id(limit)] = until_reset(limit, decision, now_ms)
            status = built[code, id(limit)] = _status(code, limit, reset)
        statuses.append(status)
    response = Response(overall_code=ok if allowed else over, statuses=statuses,
                        response_headers_to_add=headers(decision, whole, now_ms,
                                                        resets.get(id(whole))))
    if not allowed:
        response.raw_body = refusal_body(decision)
    return response


def ok_response(descriptors: int) -> Any:
    """The answer to a stream-done call (Envoy does not read it)."""
    return Response(overall_code=Response.OK,
                    statuses=[Response.DescriptorStatus(code=Response.OK)
                              for _ in range(descriptors)])


__all__ = ["UNITS", "WINDOW", "binding", "decision_response", "headers", "limit_name",
           "ok_response", "refusal_body", "until_reset"]
