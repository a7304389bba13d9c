"""Redis key layout.

Every key of one org carries the hash tag ``{<encoded org>}`` so that a decision touches one
Redis Cluster slot. Ids are percent-encoded (UTF-8, everything but ``[A-Za-z0-9_.~-]``) before
they enter a key, so no id can contain ``{``, ``}``, ``:``, ``/`` or ``=`` and the encoding is
injective: two different scopes never share a key and no id can break the tag or add a key.

Layout (``P`` is the prefix, ``bl:v2`` by default; the ``v2`` is the layout version)::

    P:{org}:c:<scope>:<period kind>:<period id>   hash  budget counter (u:/h:/c:/a: fields)
    P:{org}:g:<scope>:<metric code>:<per>         str   GCRA theoretical arrival time (us)
    P:{org}:r:<reservation id>                    str   reservation plan / settle marker
    P:{org}:d:<request id>                        str   idempotency marker of record()
    P:{org}:j:<adjustment id>                     hash  marker of an applied operator
                                                        adjustment (applied amount, time,
                                                        operation); lives at least
                                                        idempotency_seconds and as long as
                                                        the counters it changed
    P:{org}:rx                                    zset  live reservations by expiry (ms)
    P:{org}:l:<subject>:<day id>                  hash  usage ledger of one subject and day
    P:{org}:dirty                                 set   ledger keys changed since last flush
    P:{org}:ev                                    stream threshold-crossing events
    P:{org}:epoch                                 str   the org's flush sequence as Redis knows
                                                        it (missing or behind SQL: data lost)
    P:{org}:pf                                    str   pending flush record (until acked)
    P:{org}:lease                                 str   holder id of the process that
                                                        reconciles the org (PX: lease length)
    P:{org}:rs                                    str   ms of the org's last completed
                                                        reconcile pass (lag = now - this)
    P:dirty-orgs                                  set   orgs with pending markers (non-cluster)
    P:lease:deliver                               str   holder id of the alert deliverer

``<scope>`` is ``o``, ``o/t=<team>``, ``o/t=<team>/u=<user>``, ``o/u=<user>``, each optionally
followed by ``/a=<agent>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from ..policy.periods import PeriodKind, Window
from ..subject import Scope, Subject
from ..usage import Metric

DEFAULT_PREFIX = "bl:v2"


@lru_cache(maxsize=65536)
def encode_id(value: str) -> str:
    """Injective, key-safe encoding of an id (percent-encoded UTF-8)."""
    return quote(value, safe="", encoding="utf-8", errors="strict")


def decode_id(value: str) -> str:
    return unquote(value, encoding="utf-8", errors="strict")


def scope_path(scope: Scope) -> str:
    parts = ["o"]
    if scope.team is not None:
        parts.append("t=" + encode_id(scope.team))
    if scope.user is not None:
        parts.append("u=" + encode_id(scope.user))
    if scope.agent is not None:
        parts.append("a=" + encode_id(scope.agent))
    return "/".join(parts)


def parse_scope_path(org: str, path: str) -> Scope:
    values: dict[str, str] = {}
    names = {"t": "team", "u": "user", "a": "agent"}
    segments = path.split("/")
    if segments[0] != "o":
        raise ValueError(f"not a scope path: {path!r}")
    for seg in segments[1:]:
        kind, _, raw = seg.partition("=")
        values[names[kind]] = decode_id(raw)
    return Scope(org, values.get("team"), values.get("user"), values.get("agent"))


@dataclass(frozen=True, slots=True)
class CounterKey:
    """A parsed budget counter key."""

    scope: Scope
    period: PeriodKind
    period_id: str


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """A parsed ledger key: usage of one subject on one day."""

    subject: Subject
    day_id: str


class KeySpace:
    """Builds (and parses) every key of the layout under one prefix."""

    __slots__ = ("dirty_orgs", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "{} \r\n"):
            raise ValueError("key prefix must be non-empty and contain no braces or whitespace")
        self.prefix = prefix
        self.dirty_orgs = f"{prefix}:dirty-orgs"

    def org_base(self, org: str) -> str:
        """``P:{org}`` — the start of every key of this org."""
        return f"{self.prefix}:{{{encode_id(org)}}}"

    def counter(self, scope: Scope, window: Window) -> str:
        return f"{self.org_base(scope.org)}:c:{scope_path(scope)}:{window.kind.value}:{window.id}"

    def rate(self, scope: Scope, metric: Metric, per: str) -> str:
        return f"{self.org_base(scope.org)}:g:{scope_path(scope)}:{metric.code}:{per}"

    def reservation(self, org: str, reservation_id: str) -> str:
        return f"{self.org_base(org)}:r:{encode_id(reservation_id)}"

    def reservation_prefix(self, org: str) -> str:
        return f"{self.org_base(org)}:r:"

    def request(self, org: str, request_id: str) -> str:
        return f"{self.org_base(org)}:d:{encode_id(request_id)}"

    def adjustment(self, org: str, adjustment_id: str) -> str:
        """Marker of one operator adjustment (makes applying it idempotent by id)."""
        return f"{self.org_base(org)}:j:{encode_id(adjustment_id)}"

    def reservations_by_expiry(self, org: str) -> str:
        return f"{self.org_base(org)}:rx"

    def ledger(self, subject: Subject, day_id: str) -> str:
        scope = Scope(subject.org, subject.team, subject.user, subject.agent)
        return f"{self.org_base(subject.org)}:l:{scope_path(scope)}:{day_id}"

    def dirty(self, org: str) -> str:
        return f"{self.org_base(org)}:dirty"

    def events(self, org: str) -> str:
        return f"{self.org_base(org)}:ev"

    def epoch(self, org: str) -> str:
        return f"{self.org_base(org)}:epoch"

    def pending_flush(self, org: str) -> str:
        return f"{self.org_base(org)}:pf"

    def reconcile_lease(self, org: str) -> str:
        """Who reconciles ``org`` now (in the org's slot, like the keys it works on)."""
        return f"{self.org_base(org)}:lease"

    def reconciled(self, org: str) -> str:
        """When the org's last reconcile pass completed (epoch ms)."""
        return f"{self.org_base(org)}:rs"

    def deliver_lease(self) -> str:
        """Who delivers alerts from the outbox now (one key, outside every org's slot)."""
        return f"{self.prefix}:lease:deliver"

    def counter_pattern(self, org: str | None = None) -> str:
        """SCAN pattern matching the budget counters of ``org`` (of every org: None)."""
        return f"{self.org_base(org) if org is not None else self.prefix + ':{*}'}:c:*"

    def org_pattern(self) -> str:
        """SCAN pattern matching the dirty sets of every org (for slow sweeps)."""
        return f"{self.prefix}:{{*}}:dirty"

    # parsing -----------------------------------------------------------------
    def _split(self, key: str) -> tuple[str, str, str]:
        head = f"{self.prefix}:{{"
        if not key.startswith(head):
            raise ValueError(f"key {key[:80]!r} is not under prefix {self.prefix!r}")
        org_enc, sep, rest = key[len(head):].partition("}:")
        if not sep:
            raise ValueError(f"key {key[:80]!r} has no hash tag")
        kind, _, body = rest.partition(":")
        return decode_id(org_enc), kind, body

    def org_of(self, key: str) -> str:
        return self._split(key)[0]

    def parse_counter(self, key: str) -> CounterKey:
        org, kind, body = self._split(key)
        if kind != "c":
            raise ValueError(f"not a counter key: {key[:80]!r}")
        path, period, period_id = body.rsplit(":", 2) if body.count(":") >= 2 else ("", "", "")
        if not path:
            # period ids of minute/hour windows contain no ':'; day ids neither.
            raise ValueError(f"malformed counter key: {key[:80]!r}")
        return CounterKey(parse_scope_path(org, path), PeriodKind(period), period_id)

    def parse_ledger(self, key: str) -> LedgerKey:
        org, kind, body = self._split(key)
        if kind != "l":
            raise ValueError(f"not a ledger key: {key[:80]!r}")
        path, _, day_id = body.rpartition(":")
        scope = parse_scope_path(org, path)
        if scope.agent is None:
            raise ValueError(f"ledger key without agent: {key[:80]!r}")
        return LedgerKey(Subject(org, scope.agent, scope.team, scope.user), day_id)
