"""Operator adjustments are one number everywhere: live counters, the SQL record, reports and
restores agree. An adjustment counts in its scope and the scopes above it, a credit stops at
zero usage, an id makes it idempotent, and Redis is changed first. Runs on memory:// and a
real redis-server (where it applies), on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from budgetlimiter import BudgetLimiter, Scope, Subject, Usage
from budgetlimiter.durable.adjust import apply_adjustment
from budgetlimiter.durable.store import MIGRATIONS, Store
from budgetlimiter.durable.store.records import Adjustment
from budgetlimiter.errors import AdjustmentConflict
from budgetlimiter.usage import Metric

POLICY = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
  copilot: {per_invocation: "0.04"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "1000", period: month}
    agents:
      copilot:
        limits: [{metric: invocations, amount: 1000, period: day}]
    teams:
      eng:
        limits: [{metric: cost, amount: "100", period: day}]
        defaults:
          user:
            limits: [{metric: cost, amount: "20", period: day}]
"""
BOB = Subject("acme", "gpt", team="eng", user="bob")
ALICE = Subject("acme", "gpt", team="eng", user="alice")
CAROL = Subject("acme", "gpt", team="eng", user="carol")
USD = 1_000_000
ORG, TEAM = "org:acme", "org:acme/team:eng"
U_BOB, U_ALICE, U_CAROL = (f"{TEAM}/user:{u}" for u in ("bob", "alice", "carol"))
DAY = "2026-03-10"  # the test clock's day


@pytest.fixture
def bl(make_limiter: Any) -> BudgetLimiter:
    limiter: BudgetLimiter = make_limiter(POLICY)
    return limiter


@pytest.fixture
def store(make_store: Any) -> Store:
    s: Store = make_store()
    return s


def used(limiter: BudgetLimiter, scope: str, metric: str = "cost") -> int:
    """Live ``used`` of the scope's budget of ``metric`` (each has one period here)."""
    found = [s.used for s in limiter.scope_status(scope)
             if s.kind == "budget" and s.metric.value == metric]
    assert len(found) == 1, found
    assert found[0] is not None
    return found[0]


def live(limiter: BudgetLimiter, *scopes: str) -> list[int]:
    return [used(limiter, s) for s in scopes]


def spend(limiter: BudgetLimiter, subject: Subject, usd: str) -> None:
    limiter.record(subject, Usage(cost=Decimal(usd)))


def adjust(limiter: BudgetLimiter, store: Any, scope: str, amount: int,
           metric: Metric = Metric.COST, **kw: Any) -> Any:
    return apply_adjustment(limiter, store, Scope.parse(scope), metric, amount, "ops",
                            "refund", **kw)


def marker_keys(limiter: BudgetLimiter) -> list[Any]:
    return list(limiter.redis.scan_iter(match=f"{limiter.core.keys.org_base('acme')}:j:*"))


# ------------------------------------------------------------------ the store


def test_the_store_keeps_applied_and_requested_and_refuses_a_reused_id(store: Store) -> None:
    adj = Adjustment(org="acme", scope=U_BOB, metric="cost", amount=-5, day=DAY, who="ops",
                     why="refund", at_ms=1, id="a1", requested=-8)
    assert store.add_adjustment(adj) == "a1"
    assert store.add_adjustment(adj) == "a1"  # a retry
    assert store.adjustment("a1") == adj and store.adjustment("nope") is None
    with pytest.raises(AdjustmentConflict, match="a1"):
        store.add_adjustment(Adjustment(org="acme", scope=U_BOB, metric="cost", amount=-8,
                                        day=DAY, who="ops", why="refund", at_ms=1, id="a1"))
    assert store.adjustments("acme", DAY, DAY) == [adj]


def test_migration_2_keeps_adjustments_recorded_before_it(store_url: Any) -> None:
    s = Store(store_url.url, schema=store_url.schema)
    try:
        assert s.migrate(MIGRATIONS[:1]) == 1
        with s._write() as conn:
            conn.execute(text(
                "INSERT INTO bl_adjustments (id, org, scope, metric, amount, day, who, why, "
                "at_ms) VALUES ('old', 'acme', 'org:acme', 'cost', -7, '2026-01-02', 'ops', "
                "'x', 5)"))
        assert s.migrate() == len(MIGRATIONS)
        old = s.adjustment("old")
        assert old is not None and (old.amount, old.requested) == (-7, -7)
    finally:
        s.close()
