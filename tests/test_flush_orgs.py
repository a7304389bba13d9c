"""Flushes of several orgs into one SQL store: each org's flush carries an id of its own
(flush ids are unique across orgs in SQL), so every org's usage arrives, once."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme: {limits: [{metric: invocations, amount: 40, period: day}]}
  globex: {limits: [{metric: invocations, amount: 40, period: day}]}
"""


def test_the_first_flush_of_two_orgs_brings_both_orgs_usage_to_sql(fresh_redis, clock,
                                                                    make_store):
    """Both orgs are at flush sequence 0: their records differ in id all the same."""
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    store = make_store()
    try:
        bl.record(Subject("acme", "gpt"), Usage(invocations=2))
        bl.record(Subject("globex", "gpt"), Usage(invocations=3))
        assert Reconciler(bl, store).run_once().flushes == 2
        assert [(r.org, r.invocations) for org in ("acme", "globex")
                for r in store.usage_rows(org, "2026-01-01", "2026-12-31")] == [
            ("acme", 2), ("globex", 3)]
    finally:
        bl.close()


def test_a_record_of_nothing_brings_no_row_to_sql(fresh_redis, clock, make_store):
    """A record of zero usage marks its ledger dirty but writes no ledger: the flush moves
    nothing for it, and SQL gets no row (not a row of zeros)."""
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    store = make_store()
    try:
        bl.record(Subject("acme", "gpt"), Usage(invocations=0))
        stats = Reconciler(bl, store).run_once()
        assert stats.rows == 0
        assert store.usage_rows("acme", "2026-01-01", "2026-12-31") == []
    finally:
        bl.close()
