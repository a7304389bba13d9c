"""Schema migrations: an ordered list of code migrations and the runner that applies them.

Each applied migration is a row of ``bl_schema_version``; the schema version is the highest
one. The runner applies every pending migration in its own transaction, holding the migration
lock (``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and re-reads the
version under the lock, so running it twice, or from two processes at once, applies each
migration exactly once.

Adding a migration: append ``Migration(n + 1, "what it does", function)`` to
:data:`MIGRATIONS`; the function receives the connection inside the transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)

from . import schema


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change; ``apply`` runs inside the migration's transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_adjustments() -> Table:
    """``bl_adjustments`` as version 1 created it (migration 2 added ``requested``)."""
    return Table(
        "bl_adjustments", MetaData(),
        Column("id", String, primary_key=True),
        Column("org", String, nullable=False),
        Column("scope", String, nullable=False),
        Column("metric", String, nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("day", String(10), nullable=False),
        Column("who", Text, nullable=False),
        Column("why", Text, nullable=False),
        Column("at_ms", BigInteger, nullable=False),
        Index("ix_bl_adjustments_org_day", "org", "day"),
        Index("ix_bl_adjustments_scope_day", "scope", "metric", "day"),
    )


def _create_tables(conn: Connection) -> None:
    later = {schema.adjustments.name}  # changed by later migrations: created in the v1 shape
    schema.metadata.create_all(
        conn, tables=[t for t in schema.V1_TABLES if t.name not in later], checkfirst=True)
    _v1_adjustments().create(conn, checkfirst=True)


def _adjustment_requested(conn: Connection) -> None:
    # Rows written before this migration recorded the requested amount only (the live
    # counter may have clamped it); it is the best record of what was applied too.
    conn.execute(text("ALTER TABLE bl_adjustments ADD COLUMN requested BIGINT NOT NULL "
                      "DEFAULT 0"))
    conn.execute(text("UPDATE bl_adjustments SET requested = amount"))


def _overrides_and_audit(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.override_versions, schema.audit],
                               checkfirst=True)
    # The audit log is append-only in the database itself, not only in the code.
    if conn.dialect.name == "postgresql":
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION bl_audit_append_only() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'bl_audit is append-only'; END $$ LANGUAGE plpgsql"))
        conn.execute(text(
            "CREATE TRIGGER bl_audit_append_only BEFORE UPDATE OR DELETE ON bl_audit "
            "FOR EACH ROW EXECUTE FUNCTION bl_audit_append_only()"))
    else:
        for op in ("UPDATE", "DELETE"):
            conn.execute(text(
                f"CREATE TRIGGER bl_audit_no_{op.lower()} BEFORE {op} ON bl_audit "
                "BEGIN SELECT RAISE(ABORT, 'bl_audit is append-only'); END"))


#: Every migration, in order; versions are 1, 2, 3, ...
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the tables", _create_tables),
    Migration(2, "adjustments keep the requested amount next to the applied one",
              _adjustment_requested),
    Migration(3, "runtime limit overrides (versions) and the append-only audit log",
              _overrides_and_audit),
)

#: Opens a connection in a write transaction that holds the migration lock.
LockedTransaction = Callable[[], AbstractContextManager[Connection]]


def check_sequence(migrations: Sequence[Migration]) -> None:
    """Raise ``ValueError`` unless the versions are exactly 1, 2, 3, ..."""
    for expected, m in enumerate(migrations, start=1):
        if m.version != expected:
            raise ValueError(
                f"migration {m.description!r} has version {m.version}; expected {expected}")


def read_version(conn: Connection) -> int:
    """The schema version seen by ``conn`` (0 if never migrated)."""
    if not inspect(conn).has_table(schema.schema_version.name):
        return 0
    value = conn.execute(select(func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def upgrade(begin: LockedTransaction, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every pending migration, each in its own locked transaction; return the version.

    A database migrated by a newer release (version above the last known migration) is left
    alone and its version returned.
    """
    check_sequence(migrations)
    with begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_version], checkfirst=True)
        version = read_version(conn)
    for m in migrations:
        if m.version <= version:
            continue
        with begin() as conn:
            version = read_version(conn)
            if m.version <= version:  # another process applied it meanwhile
                continue
            m.apply(conn)
            conn.execute(schema.schema_version.insert().values(
                version=m.version, description=m.description,
                applied_at_ms=int(time.time() * 1000)))
            version = m.version
    return version
