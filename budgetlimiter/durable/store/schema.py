"""SQLAlchemy Core table definitions of the durable store.

The same tables serve SQLite and PostgreSQL. Amounts are ``BigInteger`` (cost in micro-USD);
instants are epoch milliseconds; ``team``/``user`` are ``""`` when absent so they can be part
of primary keys. Columns named ``user`` and ``limit`` are quoted by SQLAlchemy.

The tables here describe the *current* schema. They are created by migration 1 in
:mod:`budgetlimiter.durable.store.migrations`; any later change must be written as a new migration
(and migration 1 must then keep creating the version-1 shape).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: One row per applied migration; the schema version is the highest ``version``.
schema_version = Table(
    "bl_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at_ms", BigInteger, nullable=False),
)

#: Recorded usage totals per subject and local day.
usage = Table(
    "bl_usage",
    metadata,
    Column("org", String, nullable=False),
    Column("team", String, nullable=False),
    Column("user", String, nullable=False),
    Column("agent", String, nullable=False),
    Column("day", String(10), nullable=False),
    Column("invocations", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("total_tokens", BigInteger, nullable=False, default=0),
    Column("cost", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("org", "team", "user", "agent", "day", name="pk_bl_usage"),
    # Reports and restores filter by org and a day range.
    Index("ix_bl_usage_org_day", "org", "day"),
)

#: Applied reconciler flushes (idempotency record).
flushes = Table(
    "bl_flushes",
    metadata,
    Column("flush_id", String, primary_key=True),
    Column("org", String, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("applied_at_ms", BigInteger, nullable=False),
    Index("ux_bl_flushes_org_seq", "org", "seq", unique=True),
)

#: Per-org flush sequence: the number of flushes applied for the org.
org_state = Table(
    "bl_org_state",
    metadata,
    Column("org", String, primary_key=True),
    Column("seq", BigInteger, nullable=False, default=0),
)

#: Threshold crossings; ``id`` is :attr:`AlertEvent.id` (stable).
alert_events = Table(
    "bl_alert_events",
    metadata,
    Column("id", String, primary_key=True),
    Column("org", String, nullable=False),
    Column("scope", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("period", String, nullable=False),
    Column("period_id", String, nullable=False),
    Column("threshold", Integer, nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("limit", BigInteger, nullable=False),
    Column("occurred_ms", BigInteger, nullable=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Index("ix_bl_alert_events_org_period", "org", "period_id"),
    Index("ix_bl_alert_events_occurred", "occurred_ms"),
)

#: The outbox: one row per (event, sink).
alert_deliveries = Table(
    "bl_alert_deliveries",
    metadata,
    Column("event_id", String, nullable=False),
    Column("sink", String, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("lease_until_ms", BigInteger, nullable=False, default=0),
    Column("leased_by", String, nullable=False, default=""),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("delivered_at_ms", BigInteger, nullable=True),
    PrimaryKeyConstraint("event_id", "sink", name="pk_bl_alert_deliveries"),
    Index("ix_bl_alert_deliveries_due", "state", "next_attempt_ms"),
)

#: Every policy text ever loaded; exactly one (the latest recorded) is in force.
policy_versions = Table(
    "bl_policy_versions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 hex of the text
    Column("source", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("loaded_at_ms", BigInteger, nullable=False),
    Column("in_force", Boolean, nullable=False, default=False),
    Index("ix_bl_policy_versions_in_force", "in_force"),
)

#: Audited credits/debits of one scope's usage: ``amount`` as applied to the live counters
#: (what restores and reports use), ``requested`` as asked (added by migration 2).
adjustments = Table(
    "bl_adjustments",
    metadata,
    Column("id", String, primary_key=True),
    Column("org", String, nullable=False),
    Column("scope", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("requested", BigInteger, nullable=False, server_default="0"),
    Column("day", String(10), nullable=False),
    Column("who", Text, nullable=False),
    Column("why", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_bl_adjustments_org_day", "org", "day"),
    Index("ix_bl_adjustments_scope_day", "scope", "metric", "day"),
)

#: Versions of the runtime limit overrides (added by migration 3): each row is the complete
#: override set of that version (:class:`~budgetlimiter.policy.overrides.OverrideSet` JSON);
#: the highest version is in force. Rows are never changed (a rollback adds a version).
override_versions = Table(
    "bl_override_versions",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("doc", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("scope", Text, nullable=False),  # "" for a rollback
    Column("who", Text, nullable=False),
    Column("why", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

#: The audit log (added by migration 3), append-only (triggers refuse UPDATE and DELETE):
#: who changed what, when and why, with the state before and after (JSON).
audit = Table(
    "bl_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("who", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("org", Text, nullable=False),  # "" when not about one org
    Column("scope", Text, nullable=False),
    Column("before", Text, nullable=False),
    Column("after", Text, nullable=False),
    Column("why", Text, nullable=False),
    Column("version", BigInteger, nullable=True),
    Index("ix_bl_audit_org_at", "org", "at_ms"),
    Index("ix_bl_audit_at", "at_ms"),
)

#: The tables migration 1 creates (everything but the version table; ``adjustments`` in its
#: version-1 shape, see :mod:`budgetlimiter.durable.store.migrations`).
V1_TABLES: tuple[Table, ...] = (
    usage,
    flushes,
    org_state,
    alert_events,
    alert_deliveries,
    policy_versions,
    adjustments,
)

#: Columns of ``usage`` holding amounts, in :class:`UsageRow` order.
AMOUNT_COLUMNS: tuple[str, ...] = (
    "invocations",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost",
)
