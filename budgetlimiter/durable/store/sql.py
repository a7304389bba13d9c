"""The durable store: usage totals, flush idempotency, the alert outbox, policy versions and
adjustments, on SQLite or PostgreSQL through SQLAlchemy Core.

Concurrency: every writing method runs in one transaction. On SQLite writers start with
``BEGIN IMMEDIATE`` (one writer at a time, others wait up to the busy timeout; the database
is in WAL mode so readers are not blocked). On PostgreSQL the flush sequence row is locked
with ``SELECT ... FOR UPDATE``, outbox claims use ``FOR UPDATE SKIP LOCKED``, and migrations
and policy switches take transaction-scoped advisory locks.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import fields
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from ...errors import AdjustmentConflict
from . import migrations, schema
from .admin import AuditEntry, insert_audit
from .records import Adjustment, AlertEvent, Delivery, UsageRow

__all__ = ["FlushOutcome", "Store"]

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_BUSY_TIMEOUT_S = 30
_CHUNK = 500
_U, _F, _S, _E = schema.usage, schema.flushes, schema.org_state, schema.alert_events
_D, _P, _A = schema.alert_deliveries, schema.policy_versions, schema.adjustments


class FlushOutcome(str, Enum):
    """Result of :meth:`Store.apply_flush`."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    CONFLICT = "conflict"


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _event(row: Any) -> AlertEvent:
    return AlertEvent(**{f.name: row._mapping[f.name] for f in fields(AlertEvent)})


def _delivery(row: Any) -> Delivery:
    m = row._mapping
    return Delivery(event=_event(row), sink=m["sink"], attempts=int(m["attempts"]),
                    next_attempt_ms=int(m["next_attempt_ms"]), state=m["state"],
                    last_error=m["last_error"] or "")


_JOINED = select(*_E.c, _D.c.sink, _D.c.attempts, _D.c.next_attempt_ms, _D.c.state,
                 _D.c.last_error).join_from(_D, _E, _D.c.event_id == _E.c.id)


class Store:
    """The SQL record of usage, alerts and history.

    ``url`` is ``sqlite:///path.db`` (or ``sqlite://`` in memory, one process only),
    ``postgresql://...`` or ``postgresql+psycopg://...`` (psycopg 3 either way). ``schema``
    selects a PostgreSQL schema (created by :meth:`migrate` if missing); it may also be given
    as a ``?schema=NAME`` query parameter of the URL.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        u = make_url(url)
        if "schema" in u.query:
            schema = schema or str(u.query["schema"])
            u = u.difference_update_query(["schema"])
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        self.dialect = u.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database URL {u.render_as_string()!r}: "
                             "expected sqlite:///path.db or postgresql://...")
        if schema is not None and (self.dialect != "postgresql" or not _SCHEMA_RE.match(schema)):
            raise ValueError(f"schema must be a plain identifier and needs PostgreSQL; "
                             f"got {schema!r} for {self.dialect}")
        self.schema = schema
        self._engine = self._make_engine(u.render_as_string(hide_password=False))
        self._keys = {name: _lock_key(f"budgetlimiter:{name}:{schema or ''}")
                      for name in ("migrate", "policy", "overrides")}

    def _make_engine(self, url: str) -> Engine:
        if self.dialect == "postgresql":
            args: dict[str, Any] = {}
            if self.schema:
                args["options"] = f"-csearch_path={self.schema}"
            return create_engine(url, connect_args=args, pool_pre_ping=True)
        memory = make_url(url).database in (None, "", ":memory:")
        engine = create_engine(
            url, connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
            **({"poolclass": StaticPool} if memory else {}))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
            if not memory:
                _set_wal(cur)
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("bl_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _write(self, lock: str | None = None) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(bl_write=True)
            with conn.begin():
                if lock is not None and self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                                 {"k": self._keys[lock]})
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table)

    # ------------------------------------------------------------------ schema

    def migrate(self, steps: Sequence[migrations.Migration] | None = None) -> int:
        """Create or upgrade the schema (idempotent, safe concurrently); return its version.

        ``steps`` replaces :data:`~budgetlimiter.durable.store.migrations.MIGRATIONS`
        (for tests)."""
        if self.schema and self.dialect == "postgresql":
            with self._write("migrate") as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        return migrations.upgrade(lambda: self._write("migrate"),
                                  migrations.MIGRATIONS if steps is None else steps)

    def schema_version(self) -> int:
        """The applied schema version, 0 if the database was never migrated."""
        with self._read() as conn:
            return migrations.read_version(conn)

    # ------------------------------------------------------------------ reconciler

    def org_seq(self, org: str) -> int:
        """Number of flushes applied for ``org`` (0 if none)."""
        with self._read() as conn:
            value = conn.execute(select(_S.c.seq).where(_S.c.org == org)).scalar()
        return int(value or 0)

    def flush_applied(self, flush_id: str) -> bool:
        """Whether the flush ``flush_id`` has been applied."""
        with self._read() as conn:
            return conn.execute(select(_F.c.flush_id).where(_F.c.flush_id == flush_id)
                                ).first() is not None

    def apply_flush(self, org: str, flush_id: str, expected_seq: int,
                    rows: Sequence[UsageRow]) -> FlushOutcome:
        """Add ``rows`` (deltas) to the usage totals in one transaction, exactly once.

        Returns ``ALREADY_APPLIED`` if ``flush_id`` was recorded before, ``CONFLICT`` if the
        org's sequence is not ``expected_seq`` (nothing changes in either case), else applies
        the rows, records the flush, sets the sequence to ``expected_seq + 1`` and returns
        ``APPLIED``.
        """
        merged: dict[tuple[str, str, str, str], list[int]] = {}
        for r in rows:
            if r.org != org:
                raise ValueError(f"usage row of org {r.org!r} in a flush of org {org!r}")
            acc = merged.setdefault((r.team, r.user, r.agent, r.day), [0] * 5)
            for i, name in enumerate(schema.AMOUNT_COLUMNS):
                acc[i] += int(getattr(r, name))
        with self._write() as conn:
            conn.execute(self._insert(_S).values(org=org, seq=0).on_conflict_do_nothing(
                index_elements=[_S.c.org]))
            seq = conn.execute(select(_S.c.seq).where(_S.c.org == org).with_for_update()
                               ).scalar_one()
            outcome = FlushOutcome.CONFLICT if int(seq) != expected_seq else None
            if conn.execute(select(_F.c.flush_id).where(_F.c.flush_id == flush_id)).first():
                outcome = FlushOutcome.ALREADY_APPLIED
            if outcome is not None:
                conn.rollback()  # not even the org_state row stays
                return outcome
            if merged:
                ins = self._insert(_U)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=[_U.c.org, _U.c.team, _U.c.user, _U.c.agent, _U.c.day],
                    set_={c: _U.c[c] + ins.excluded[c] for c in schema.AMOUNT_COLUMNS},
                ), [dict(zip(("team", "user", "agent", "day"), k, strict=True), org=org,
                             **dict(zip(schema.AMOUNT_COLUMNS, v, strict=True)))
                    for k, v in merged.items()])
            conn.execute(_F.insert().values(flush_id=flush_id, org=org, seq=expected_seq,
                                            applied_at_ms=_now_ms()))
            conn.execute(update(_S).where(_S.c.org == org).values(seq=expected_seq + 1))
        return FlushOutcome.APPLIED

    def usage_rows(self, org: str, first_day: str, last_day: str) -> list[UsageRow]:
        """Recorded totals of ``org`` for the days ``first_day .. last_day`` (inclusive)."""
        q = (select(_U).where(_U.c.org == org, _U.c.day >= first_day, _U.c.day <= last_day)
             .order_by(_U.c.day, _U.c.team, _U.c.user, _U.c.agent))
        with self._read() as conn:
            return [UsageRow(**r._mapping) for r in conn.execute(q)]

    def known_orgs(self) -> list[str]:
        """Every org with recorded usage or flush state, sorted."""
        q = union(select(_U.c.org).distinct(), select(_S.c.org))
        with self._read() as conn:
            return sorted(str(o) for o in conn.execute(q).scalars())

    # ------------------------------------------------------------------ alert outbox

    def record_alerts(self, events: Sequence[AlertEvent], sinks: Sequence[str],
                      now_ms: int) -> int:
        """Insert the events not yet recorded, each with one pending delivery per sink.

        Returns how many events were new. Safe to call concurrently with the same events."""
        unique = {e.id: e for e in events}
        new = 0
        with self._write() as conn:
            for eid in sorted(unique):  # a fixed order: concurrent callers cannot deadlock
                e = unique[eid]
                res = conn.execute(self._insert(_E).values(
                    id=eid, org=e.org, scope=e.scope, metric=e.metric, period=e.period,
                    period_id=e.period_id, threshold=e.threshold, used=e.used,
                    limit=e.limit, occurred_ms=e.occurred_ms, recorded_ms=now_ms,
                ).on_conflict_do_nothing(index_elements=[_E.c.id]).returning(_E.c.id))
                if res.first() is None:
                    continue
                new += 1
                for sink in dict.fromkeys(sinks):
                    conn.execute(self._insert(_D).values(
                        event_id=eid, sink=sink, state="pending", attempts=0,
                        next_attempt_ms=now_ms, lease_until_ms=0, leased_by="",
                        last_error="", created_ms=now_ms, updated_ms=now_ms,
                    ).on_conflict_do_nothing(index_elements=[_D.c.event_id, _D.c.sink]))
        return new

    def fired_thresholds(self, org: str, period_ids: Collection[str]) -> list[AlertEvent]:
        """Events of ``org`` recorded for any of ``period_ids``."""
        ids = sorted(set(period_ids))
        out: list[AlertEvent] = []
        with self._read() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = (select(_E).where(_E.c.org == org, _E.c.period_id.in_(ids[i:i + _CHUNK]))
                     .order_by(_E.c.occurred_ms, _E.c.id))
                out.extend(_event(r) for r in conn.execute(q))
        return out

    def events(self, org: str | None = None, limit: int = 100) -> list[AlertEvent]:
        """Recorded events, newest first (optionally of one org)."""
        q = select(_E).order_by(_E.c.occurred_ms.desc(), _E.c.id).limit(limit)
        if org is not None:
            q = q.where(_E.c.org == org)
        with self._read() as conn:
            return [_event(r) for r in conn.execute(q)]

    def claim_due(self, now_ms: int, limit: int, lease_ms: int, worker: str) -> list[Delivery]:
        """Lease up to ``limit`` due pending deliveries to ``worker`` until
        ``now_ms + lease_ms``, oldest first. No two workers get the same row while the lease
        lasts."""
        due = (select(_D.c.event_id, _D.c.sink)
               .where(_D.c.state == "pending", _D.c.next_attempt_ms <= now_ms,
                      _D.c.lease_until_ms < now_ms)
               .order_by(_D.c.next_attempt_ms, _D.c.created_ms, _D.c.event_id, _D.c.sink)
               .limit(limit).with_for_update(skip_locked=True))
        with self._write() as conn:
            keys = [(r.event_id, r.sink) for r in conn.execute(due)]
            for eid, sink in keys:
                conn.execute(update(_D).where(_D.c.event_id == eid, _D.c.sink == sink)
                             .values(lease_until_ms=now_ms + lease_ms, leased_by=worker))
            return [_delivery(conn.execute(_JOINED.where(
                _D.c.event_id == eid, _D.c.sink == sink)).one()) for eid, sink in keys]

    def _finish(self, event_id: str, sink: str, pending_only: bool, **values: Any) -> None:
        cond = [_D.c.event_id == event_id, _D.c.sink == sink,
                *([_D.c.state == "pending"] if pending_only else [])]
        with self._write() as conn:
            conn.execute(update(_D).where(*cond).values(lease_until_ms=0, leased_by="",
                                                        **values))

    def mark_delivered(self, event_id: str, sink: str, now_ms: int) -> None:
        """Record a successful delivery (counts as one more attempt; releases the lease)."""
        self._finish(event_id, sink, False, state="delivered", delivered_at_ms=now_ms,
                     updated_ms=now_ms, attempts=_D.c.attempts + 1)

    def mark_retry(self, event_id: str, sink: str, attempts: int, next_attempt_ms: int,
                   error: str) -> None:
        """Record a failed attempt of a pending delivery, due again at ``next_attempt_ms``."""
        self._finish(event_id, sink, True, attempts=attempts, next_attempt_ms=next_attempt_ms,
                     last_error=error)

    def mark_dead(self, event_id: str, sink: str, attempts: int, error: str,
                  now_ms: int) -> None:
        """Dead-letter a pending delivery (no more attempts until requeued)."""
        self._finish(event_id, sink, True, state="dead", attempts=attempts,
                     last_error=error, updated_ms=now_ms)

    def deliveries(self, state: str | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries (optionally in one state), most recently created first."""
        q = (_JOINED.order_by(_D.c.created_ms.desc(), _D.c.event_id, _D.c.sink).limit(limit))
        if state is not None:
            q = q.where(_D.c.state == state)
        with self._read() as conn:
            return [_delivery(r) for r in conn.execute(q)]

    def requeue_dead(self, event_id: str | None = None, now_ms: int = 0) -> int:
        """Put dead deliveries (all, or those of one event) back in the queue, due at
        ``now_ms`` with zero attempts; return how many."""
        q = update(_D).where(_D.c.state == "dead")
        if event_id is not None:
            q = q.where(_D.c.event_id == event_id)
        with self._write() as conn:
            res = conn.execute(q.values(state="pending", attempts=0, next_attempt_ms=now_ms,
                                        lease_until_ms=0, leased_by="", updated_ms=now_ms))
            return int(res.rowcount)

    def backlog(self) -> int:
        """Number of pending deliveries."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(_D)
                                    .where(_D.c.state == "pending")).scalar_one())

    # ------------------------------------------------------------------ policy, adjustments

    def record_policy(self, text: str, source: str, now_ms: int) -> str:
        """Record a policy text (if new) and make it the one in force; return its id (the
        sha256 hex of the text)."""
        pid = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._write("policy") as conn:
            conn.execute(self._insert(_P).values(
                id=pid, source=source, text=text, loaded_at_ms=now_ms, in_force=False,
            ).on_conflict_do_nothing(index_elements=[_P.c.id]))
            conn.execute(update(_P).where(_P.c.in_force, _P.c.id != pid)
                         .values(in_force=False))
            conn.execute(update(_P).where(_P.c.id == pid).values(in_force=True))
        return pid

    def policy_in_force(self) -> tuple[str, str, str] | None:
        """``(id, source, text)`` of the policy in force, or ``None``."""
        with self._read() as conn:
            row = conn.execute(select(_P.c.id, _P.c.source, _P.c.text)
                               .where(_P.c.in_force).limit(1)).first()
        return None if row is None else (row.id, row.source, row.text)

    def add_adjustment(self, adj: Adjustment, audit: AuditEntry | None = None) -> str:
        """Record an adjustment (idempotent by id; an id is generated if ``adj.id`` is
        empty); return its id.

        Recording the same adjustment again is a no-op (a retry); an id already recorded for
        a different adjustment (org, scope, metric or amounts differ) raises
        :class:`~budgetlimiter.errors.AdjustmentConflict` and changes nothing."""
        adj_id = adj.id or "adj_" + uuid.uuid4().hex
        with self._write() as conn:
            res = conn.execute(self._insert(_A).values(
                id=adj_id, org=adj.org, scope=adj.scope, metric=adj.metric,
                amount=adj.amount, requested=adj.requested, day=adj.day, who=adj.who,
                why=adj.why, at_ms=adj.at_ms,
            ).on_conflict_do_nothing(index_elements=[_A.c.id]).returning(_A.c.id))
            inserted = res.first() is not None
            if inserted and audit is not None:  # audited with the row, or not at all
                insert_audit(conn, audit, adj.at_ms)
            if not inserted:
                old = conn.execute(select(_A).where(_A.c.id == adj_id)).one()._mapping
                if (old["org"], old["scope"], old["metric"], old["amount"], old["requested"]
                        ) != (adj.org, adj.scope, adj.metric, adj.amount, adj.requested):
                    raise AdjustmentConflict(
                        f"adjustment id {adj_id!r} was already used for a different "
                        f"adjustment ({old['scope']} {old['metric']} {old['requested']})")
        return adj_id

    def adjustment(self, adj_id: str) -> Adjustment | None:
        """The adjustment recorded under ``adj_id``, or ``None``."""
        with self._read() as conn:
            row = conn.execute(select(_A).where(_A.c.id == adj_id)).first()
        return None if row is None else Adjustment(**row._mapping)

    def adjustments(self, org: str, first_day: str, last_day: str) -> list[Adjustment]:
        """Adjustments of ``org`` dated ``first_day .. last_day`` (inclusive), oldest first."""
        q = (select(_A).where(_A.c.org == org, _A.c.day >= first_day, _A.c.day <= last_day)
             .order_by(_A.c.day, _A.c.at_ms, _A.c.id))
        with self._read() as conn:
            return [Adjustment(**r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ for reports

    def reading(self) -> AbstractContextManager[Connection]:
        """A connection in a read transaction (for :mod:`budgetlimiter.durable.store.reports`)."""
        return self._read()

    def writing(self, lock: str) -> AbstractContextManager[Connection]:
        """A connection in a write transaction holding the named lock (``"overrides"``; for
        :mod:`budgetlimiter.durable.store.admin`): writers of one lock run one at a time."""
        return self._write(lock)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _set_wal(cur: Any) -> None:
    """Switch to WAL. The switch needs an exclusive lock and SQLite does not apply the busy
    timeout to it, so processes opening a new database at once retry here."""
    import sqlite3
    import time

    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
