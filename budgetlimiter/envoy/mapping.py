"""Envoy's ``RateLimitRequest`` → one budgetlimiter call (sans-I/O).

A ``ShouldRateLimit`` request carries descriptors, each a list of ``key=value`` entries with
an optional ``hits_addend``. :func:`parse_request` reads them with the policy's ``envoy:``
section (:class:`~budgetlimiter.policy.envoy.EnvoyMapping`) into a :class:`Call`: the
subject, the usage, the request id and the phase (request time or stream done). The whole
request is one call: all its descriptors together describe one subject, so the service makes
one atomic check of the whole hierarchy, never one check per descriptor.

Rules (the README's "Behind Envoy" states them for users):

* Entries whose key the mapping does not name are ignored (Envoy may add its own).
* Every descriptor that carries a key must carry the same value for it.
* A descriptor's amount is its own ``hits_addend``, else the request's ``hits_addend``;
  without either it carries no amount (the call is still one request). The amount counts
  the metric named by the descriptor's metric entry, else the mapping's ``hits_addend``.
  Descriptors carrying the same metric must agree on the amount.
* Request time: the estimate is the mapping's ``estimate`` raised to what the descriptors
  carry. Stream done: the usage is exactly what they carry; ``total_tokens`` alone counts as
  output tokens (the dearer side of every shipped price), with ``input_tokens`` or
  ``output_tokens`` beside it the other side is the difference.

Every problem raises :class:`InvalidRequest` (the service answers ``INVALID_ARGUMENT``)
before anything is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from ..errors import InvalidInput
from ..policy.envoy import HITS_METRICS, EnvoyMapping
from ..subject import MAX_ID_LENGTH, Subject, validate_reservation_id
from ..usage import Usage

Phase = Literal["request", "stream_done"]
#: the levels below the org that a descriptor can name (the org is implied by the call)
LEVELS: tuple[str, ...] = ("team", "user", "agent")
#: more descriptors, or entries in one, than any real route produces
MAX_DESCRIPTORS = 64
MAX_ENTRIES = 64
#: validated subjects and usages, reused: a gateway asks for the same few again and again
#: (a Subject validates every character of its ids; cleared when full, like the policy memo)
_MEMO_SIZE = 50_000
_subjects: dict[tuple[str, str, str | None, str | None], Subject] = {}
_usages: dict[tuple[int, int, int, int | None], Usage] = {}
_roles_memo: dict[int, tuple[EnvoyMapping, dict[str, str]]] = {}
#: parsed requests by shape, per mapping: a gateway sends the same few shapes (domain,
#: descriptors, entries, hits_addend) again and again, with a fresh request id each time, so
#: the shape without the id's value is the key and only the id is checked per call
_SHAPES_SIZE = 10_000
_shapes_memo: dict[int, tuple[EnvoyMapping, dict[tuple[Any, ...], tuple[Any, ...]]]] = {}
#: closes each descriptor in a shape key (never equal to an entry's key or value, both str)
_END = object()


class InvalidRequest(InvalidInput):
    """A ``ShouldRateLimit`` request the mapping cannot accept; nothing was counted."""


@dataclass(frozen=True, slots=True)
class Call:
    """What one ``ShouldRateLimit`` request asks for.

    ``covers[i]`` holds the levels (``team``, ``user``, ``agent``) that descriptor ``i``
    names: its status reports the limits of the scopes made of those levels (and the org).
    """

    phase: Phase
    subject: Subject
    usage: Usage
    request_id: str | None
    covers: tuple[frozenset[str], ...]


def _roles(mapping: EnvoyMapping) -> dict[str, str]:
    """descriptor key -> role (org, team, user, agent, request_id, metric, phase)."""
    hit = _roles_memo.get(id(mapping))
    if hit is not None and hit[0] is mapping:
        return hit[1]
    if len(_roles_memo) > 64:
        _roles_memo.clear()
    roles = _build_roles(mapping)
    _roles_memo[id(mapping)] = (mapping, roles)
    return roles


def _build_roles(mapping: EnvoyMapping) -> dict[str, str]:
    entries = mapping.entries
    roles = {"phase": mapping.stream_done.key}
    for role in ("org", "team", "user", "agent", "request_id", "metric"):
        key = getattr(entries, role)
        if key is not None:
            roles[role] = key
    return {key: role for role, key in roles.items()}


def _hits(descriptor: Any, request: Any) -> int | None:
    if descriptor.HasField("hits_addend"):
        return int(descriptor.hits_addend.value)
    return int(request.hits_addend) if request.hits_addend else None


class _Reader:
    """Accumulates the descriptors of one request."""

    def __init__(self, mapping: EnvoyMapping) -> None:
        self.mapping = mapping
        self.roles = _roles(mapping)
        self.values: dict[str, str] = {}
        self.where: dict[str, int] = {}
        self.amounts: dict[str, int] = {}
        self.covers: list[frozenset[str]] = []

    def read(self, index: int, descriptor: Any, request_hits: Any) -> None:
        entries = descriptor.entries
        if len(entries) > MAX_ENTRIES:
            raise InvalidRequest(f"descriptors[{index}] has {len(entries)} entries; "
                                 f"at most {MAX_ENTRIES} are accepted")
        levels: set[str] = set()
        metric: str = self.mapping.hits_addend
        for entry in entries:
            role = self.roles.get(entry.key)
            if role is None:
                continue
            if role == "metric":
                metric = self._metric(index, entry.key, entry.value)
                continue
            self._set(index, role, entry.key, entry.value)
            if role in LEVELS:
                levels.add(role)
        hits = _hits(descriptor, request_hits)
        if hits is not None:
            self._amount(index, metric, hits)
        self.covers.append(frozenset(levels))

    def _metric(self, index: int, key: str, value: str) -> str:
        if value not in HITS_METRICS:
            raise InvalidRequest(
                f"descriptors[{index}]: entry {key!r} is {value[:60]!r}; a metric is one of "
                + ", ".join(HITS_METRICS))
        return value

    def _set(self, index: int, role: str, key: str, value: str) -> None:
        before = self.values.get(role)
        if before is not None and before != value:
            raise InvalidRequest(
                f"descriptors[{index}]: entry {key!r} is {value[:60]!r} but "
                f"{before[:60]!r} in descriptors[{self.where[role]}]; one request is one "
                "subject")
        self.values[role] = value
        self.where.setdefault(role, index)

    def _amount(self, index: int, metric: str, hits: int) -> None:
        if hits > self.mapping.max_hits_addend:
            raise InvalidRequest(
                f"descriptors[{index}]: hits_addend {hits} of {metric} exceeds the mapping's "
                f"max_hits_addend {self.mapping.max_hits_addend}")
        before = self.amounts.get(metric)
        if before is not None and before != hits:
            raise InvalidRequest(
                f"descriptors[{index}]: hits_addend {hits} of {metric} disagrees with {before} "
                "of an earlier descriptor; descriptors of one request carry one amount per "
                "metric")
        self.amounts[metric] = hits



def _request_id(value: str | None, mapping: EnvoyMapping) -> str | None:
    if value is None:
        return None
    if len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable():
        return value  # (the common case, without the per-character check)
    try:
        return validate_reservation_id(value)
    except InvalidInput as exc:
        raise InvalidRequest(f"entry {mapping.entries.request_id!r} (the request id): "
                             f"{exc}") from None


def _shapes(mapping: EnvoyMapping) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    hit = _shapes_memo.get(id(mapping))
    if hit is not None and hit[0] is mapping:
        return hit[1]
    if len(_shapes_memo) > 64:
        _shapes_memo.clear()
    shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    _shapes_memo[id(mapping)] = (mapping, shapes)
    return shapes


def _shape(request: Any, roles: dict[str, str], rid_key: str | None
           ) -> tuple[tuple[Any, ...] | None, str | None]:
    """The request's shape key and its request id; ``(None, None)`` when the request is too
    large or its descriptors disagree on the id (the full reading says why)."""
    descriptors = request.descriptors
    if len(descriptors) > MAX_DESCRIPTORS:
        return None, None
    parts: list[Any] = [request.domain, request.hits_addend]
    rid: str | None = None
    for descriptor in descriptors:
        entries = descriptor.entries
        if len(entries) > MAX_ENTRIES:
            return None, None
        for entry in entries:
            key = entry.key
            if key not in roles:
                continue  # ignored by the reading too: not part of the shape
            value = entry.value
            if key == rid_key:
                if rid is not None and rid != value:
                    return None, None
                rid, value = value, None  # the id is not part of the shape, its place is
            parts.append(key)
            parts.append(value)
        parts.append(_END)
        parts.append(descriptor.hits_addend.value if descriptor.HasField("hits_addend")
                     else None)
    return tuple(parts), rid


def parse_request(request: Any, mapping: EnvoyMapping) -> Call:
    """Read an ``envoy.service.ratelimit.v3.RateLimitRequest`` with ``mapping``.

    Raises :class:`InvalidRequest` (nothing is counted) for an unknown domain, no
    descriptors, a missing org (or agent, without ``default_agent``), ids that fail
    validation, disagreeing descriptors or an absurd ``hits_addend``. A request of a shape
    read before (the same entries and amounts, any request id) reuses that reading.
    """
    shape, rid = _shape(request, _roles(mapping), mapping.entries.request_id)
    if shape is not None:
        shapes = _shapes(mapping)
        known = shapes.get(shape)
        if known is not None:
            phase, subject, usage, covers = known
            return Call(phase, subject, usage, _request_id(rid, mapping), covers)
        call = _read(request, mapping)
        if len(shapes) >= _SHAPES_SIZE:
            shapes.clear()
        shapes[shape] = (call.phase, call.subject, call.usage, call.covers)
        return call
    return _read(request, mapping)


def _read(request: Any, mapping: EnvoyMapping) -> Call:
    if request.domain not in mapping.domains:
        raise InvalidRequest(f"unknown domain {request.domain[:80]!r}; this service accepts "
                             + ", ".join(repr(d) for d in mapping.domains))
    descriptors = request.descriptors
    if not descriptors:
        raise InvalidRequest("the request has no descriptors")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise InvalidRequest(f"the request has {len(descriptors)} descriptors; at most "
                             f"{MAX_DESCRIPTORS} are accepted")
    reader = _Reader(mapping)
    for index, descriptor in enumerate(descriptors):
        reader.read(index, descriptor, request)
    phase = _phase(reader, mapping)
    subject = _subject(reader, mapping)
    usage = _usage(reader.amounts, mapping, phase)
    request_id = _request_id(reader.values.get("request_id"), mapping)
    return Call(phase, subject, usage, request_id, tuple(reader.covers))


def _phase(reader: _Reader, mapping: EnvoyMapping) -> Phase:
    value = reader.values.get("phase")
    if value is None:
        return "request"
    if value != mapping.stream_done.value:
        raise InvalidRequest(
            f"entry {mapping.stream_done.key!r} is {value[:60]!r}; only "
            f"{mapping.stream_done.value!r} (the stream-done call) is known")
    return "stream_done"


def _subject(reader: _Reader, mapping: EnvoyMapping) -> Subject:
    org = reader.values.get("org")
    if org is None:
        raise InvalidRequest(f"no descriptor carries the org entry {mapping.entries.org!r}")
    agent = reader.values.get("agent") or mapping.default_agent
    if agent is None:
        raise InvalidRequest(f"no descriptor carries the agent entry {mapping.entries.agent!r}"
                             " and the mapping has no default_agent")
    key = (org, agent, reader.values.get("team"), reader.values.get("user"))
    subject = _subjects.get(key)
    if subject is None:
        try:
            subject = Subject(org, agent, team=key[2], user=key[3])
        except InvalidInput as exc:
            raise InvalidRequest(f"invalid subject in the descriptors: {exc}") from None
        if len(_subjects) >= _MEMO_SIZE:
            _subjects.clear()
        _subjects[key] = subject
    return subject


def _usage(amounts: dict[str, int], mapping: EnvoyMapping, phase: Phase) -> Usage:
    if phase == "request":
        est = mapping.estimate
        inp = max(est.input_tokens, amounts.get("input_tokens", 0))
        out = max(est.output_tokens, amounts.get("output_tokens", 0))
        total = amounts.get("total_tokens", 0)
        out += max(0, total - inp - out)
    else:
        inp, out = split_tokens(amounts.get("input_tokens"), amounts.get("output_tokens"),
                                amounts.get("total_tokens"))
    micros = amounts.get("micro_usd")
    key = (inp, out, amounts.get("requests", 1), micros)
    usage = _usages.get(key)
    if usage is None:
        cost = None if micros is None else Decimal(micros).scaleb(-6)
        try:
            usage = Usage(inp, out, key[2], cost)
        except InvalidInput as exc:
            raise InvalidRequest(f"usage out of range: {exc}") from None
        if len(_usages) >= _MEMO_SIZE:
            _usages.clear()
        _usages[key] = usage
    return usage


def split_tokens(inp: int | None, out: int | None, total: int | None) -> tuple[int, int]:
    """Input and output tokens from what a stream-done call reported (see the module doc)."""
    if total is None:
        return inp or 0, out or 0
    if inp is None and out is None:
        return 0, total
    if inp is None:
        assert out is not None
        inp = total - out
    elif out is None:
        out = total - inp
    if inp < 0 or out < 0 or inp + out != total:
        raise InvalidRequest(f"total_tokens {total} does not add up with input_tokens and "
                             f"output_tokens ({inp} + {out})")
    return inp, out


def covered(scope_levels: Iterable[str], levels: frozenset[str]) -> bool:
    """True when a descriptor naming ``levels`` covers a scope with ``scope_levels``."""
    return all(level in levels for level in scope_levels if level != "org")


__all__ = ["Call", "InvalidRequest", "Phase", "covered", "parse_request", "split_tokens"]
