"""A restore from the durable record, exactly: how many counters it raises (each lost one
once; none when nothing was lost), a threshold reached exactly by the restored total fires,
and a restored counter expires with its period (plus retention), not later."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler

pytestmark = pytest.mark.redis

# ALICE's usage counts in 3 counters: org cost (month), org invocations (day), team cost (day)
POLICY = """
timezone: UTC
retention_seconds: 3600
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.01", period: month, thresholds: [50, 100]}
      - {metric: invocations, amount: 40, period: day}
    teams:
      eng:
        limits: [{metric: cost, amount: "0.004", period: day}]
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")


def lose_everything(redis_server, bl: BudgetLimiter) -> None:
    redis_server.kill()  # no persistence: every counter is gone
    redis_server.start()
    bl.redis.connection_pool.disconnect()


def test_a_restore_raises_each_lost_counter_once_and_a_second_one_raises_none(
        make_store, redis_server, clock):
    redis_server.restart()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, make_store())
    try:
        bl.record(ALICE, Usage(input_tokens=1000))
        rec.run_once()  # flushed to SQL
        lose_everything(redis_server, bl)
        assert rec.restore_org("acme") == 3
        assert rec.restore_org("acme") == 0  # every counter already equals the record
    finally:
        bl.close()


@pytest.mark.parametrize(("after_loss", "fired"), [(2000, [("month", 50)]), (1999, [])])
def test_a_threshold_fires_on_restore_exactly_when_the_restored_total_reaches_it(
        make_store, redis_server, clock, after_loss, fired):
    """30 % recorded and flushed, Redis loses everything, 20 % more (or one unit less) on the
    empty counters (they see 20 %): the restore puts back exactly 50 % of $0.01 and the 50 %
    threshold fires then (5000 * 100 >= 50 * 10000); at 4999 it does not."""
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    try:
        bl.record(ALICE, Usage(input_tokens=3000))
        rec.run_once()
        lose_everything(redis_server, bl)
        bl.record(ALICE, Usage(input_tokens=after_loss))
        rec.run_once()
        org = next(s for s in bl.status(ALICE) if str(s.scope) == "org:acme"
                   and s.metric.value == "cost")
        assert org.used == 3000 + after_loss
        assert [(e.period, e.threshold) for e in store.events("acme")
                if e.metric == "cost" and e.scope == "org:acme"] == fired
    finally:
        bl.close()


def test_a_restored_counter_expires_with_its_period_plus_retention(make_store, redis_server,
                                                                   clock):
    redis_server.restart()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, make_store())
    try:
        bl.record(ALICE, Usage(input_tokens=1000))
        rec.run_once()
        lose_everything(redis_server, bl)
        rec.restore_org("acme")
        # the fake clock stands at 2026-03-10 12:00 UTC: the day ends in 12 h, plus 1 h
        day_counter = bl.keys.counter_pattern("acme").replace("*", "*:day:*")
        keys = list(bl.redis.scan_iter(match=day_counter))
        assert len(keys) == 2  # org invocations, team cost
        for key in keys:
            pttl = bl.redis.pttl(key)
            assert 13 * 3600_000 - 60_000 < pttl <= 13 * 3600_000
    finally:
        bl.close()


def test_an_acknowledged_flush_leaves_the_org_epoch_at_its_sql_sequence(make_store,
                                                                        redis_server, clock):
    """The epoch is how the next flush knows Redis still holds what SQL has: after each
    acknowledged flush it equals the org's flush sequence in SQL (1, then 2), and no pass
    mistakes the org for one whose Redis lost data (no restore)."""
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    try:
        for seq in (1, 2):
            bl.record(ALICE, Usage(input_tokens=100))
            stats = rec.run_once()
            assert (stats.flushes, stats.restored) == (1, [])
            assert store.org_seq("acme") == seq
            assert bl.redis.get(bl.keys.epoch("acme")) == str(seq).encode()
    finally:
        bl.close()


def test_the_first_usage_of_an_org_puts_it_in_the_global_dirty_set(fresh_redis, clock):
    """How a reconciler finds an org it never flushed (SQL does not know it yet): the first
    settle that makes the org dirty adds it to P:dirty-orgs; the flush takes it out."""
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    try:
        assert not bl.redis.sismember(bl.keys.dirty_orgs, "acme")
        bl.record(ALICE, Usage(input_tokens=100))
        assert bl.redis.smembers(bl.keys.dirty_orgs) == {b"acme"}
    finally:
        bl.close()
