"""SQL of the runtime overrides (``bl_override_versions``) and the audit log (``bl_audit``).

A change of the overrides is one transaction that holds the ``overrides`` lock (PostgreSQL
advisory lock; SQLite ``BEGIN IMMEDIATE``): it reads the version in force, lets the caller
check its precondition and compute the next set, and writes the new version and its audit
entry together, or nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from ...policy.overrides import OverrideSet
from . import schema

_V, _AU = schema.override_versions, schema.audit


@dataclass(frozen=True)
class VersionRow:
    """One version of the overrides (without its document)."""

    version: int
    action: str
    scope: str
    who: str
    why: str
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "action": self.action, "scope": self.scope or None,
                "who": self.who, "why": self.why, "at_ms": self.at_ms}


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry; ``before``/``after`` are JSON-able (None: nothing)."""

    who: str
    action: str
    org: str
    scope: str
    before: Any
    after: Any
    why: str
    version: int | None = None
    at_ms: int = 0
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at_ms": self.at_ms, "who": self.who, "action": self.action,
                "org": self.org or None, "scope": self.scope or None, "before": self.before,
                "after": self.after, "why": self.why, "version": self.version}


@dataclass(frozen=True)
class Change:
    """What a change callback decided: the new set, its audit entry, and a version row."""

    overrides: OverrideSet
    action: str
    scope: str
    entry: AuditEntry


def _now_ms() -> int:
    return int(time.time() * 1000)


def _latest(conn: Connection) -> OverrideSet:
    row = conn.execute(select(_V.c.doc).order_by(_V.c.version.desc()).limit(1)).first()
    return OverrideSet() if row is None else OverrideSet.from_json(row.doc)


def latest_overrides(store: Any) -> OverrideSet:
    """The override set in force (version 0 and empty when none was ever written)."""
    with store.reading() as conn:
        return _latest(conn)


def override_version(store: Any, version: int) -> OverrideSet | None:
    """The override set of ``version``, or None."""
    with store.reading() as conn:
        row = conn.execute(select(_V.c.doc).where(_V.c.version == version)).first()
    return None if row is None else OverrideSet.from_json(row.doc)


def override_versions(store: Any, limit: int = 100) -> list[VersionRow]:
    """The latest ``limit`` versions, newest first."""
    q = (select(_V.c.version, _V.c.action, _V.c.scope, _V.c.who, _V.c.why, _V.c.at_ms)
         .order_by(_V.c.version.desc()).limit(limit))
    with store.reading() as conn:
        return [VersionRow(int(r.version), r.action, r.scope, r.who, r.why, int(r.at_ms))
                for r in conn.execute(q)]


def insert_audit(conn: Connection, entry: AuditEntry, at_ms: int) -> None:
    """Append ``entry`` within the caller's transaction."""
    conn.execute(_AU.insert().values(
        at_ms=at_ms, who=entry.who, action=entry.action, org=entry.org, scope=entry.scope,
        before=json.dumps(entry.before, sort_keys=True),
        after=json.dumps(entry.after, sort_keys=True), why=entry.why, version=entry.version))


def change_overrides(store: Any, decide: Callable[[OverrideSet], Change]) -> Change:
    """Run ``decide`` on the set in force under the overrides lock and store what it returns
    (the new version and its audit entry, in one transaction). ``decide`` raises to refuse
    (nothing is written)."""
    with store.writing("overrides") as conn:
        current = _latest(conn)
        change = decide(current)
        at = _now_ms()
        conn.execute(_V.insert().values(
            version=change.overrides.version, doc=change.overrides.to_json(),
            action=change.action, scope=change.scope, who=change.entry.who,
            why=change.entry.why, at_ms=at))
        insert_audit(conn, change.entry, at)
    return change


def append_audit(store: Any, entry: AuditEntry) -> None:
    """Append one entry to the audit log."""
    with store.writing("overrides") as conn:
        insert_audit(conn, entry, entry.at_ms or _now_ms())


def audit_entries(store: Any, org: str | None = None, from_ms: int | None = None,
                  to_ms: int | None = None, limit: int = 500) -> list[AuditEntry]:
    """Audit entries, oldest first: of ``org`` (entries about no org, like a policy reload,
    are included), between ``from_ms`` and ``to_ms`` (inclusive), at most ``limit`` (the
    newest ones)."""
    q = select(_AU)
    if org is not None:
        q = q.where(_AU.c.org.in_([org, ""]))
    if from_ms is not None:
        q = q.where(_AU.c.at_ms >= from_ms)
    if to_ms is not None:
        q = q.where(_AU.c.at_ms <= to_ms)
    q = q.order_by(_AU.c.at_ms.desc(), _AU.c.id.desc()).limit(limit)
    with store.reading() as conn:
        rows = list(conn.execute(q))
    out = [AuditEntry(who=r.who, action=r.action, org=r.org, scope=r.scope,
                      before=json.loads(r.before), after=json.loads(r.after), why=r.why,
                      version=None if r.version is None else int(r.version),
                      at_ms=int(r.at_ms), id=int(r.id)) for r in rows]
    return out[::-1]


def latest_version_number(store: Any) -> int:
    """The version in force (0: none)."""
    with store.reading() as conn:
        return int(conn.execute(select(func.coalesce(func.max(_V.c.version), 0))).scalar_one())
