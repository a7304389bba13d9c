"""The reconciler against a real redis-server and both SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.store.records import UsageRow

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.01", period: month, thresholds: [50, 100]}
      - {metric: invocations, amount: 40, period: day, rollover: accumulate, rollover_cap: 10}
    teams:
      eng:
        limits: [{metric: cost, amount: "0.004", period: day}]
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")
BOB = Subject("acme", "gpt", team="ops", user="bob")


@pytest.fixture
def limiter(fresh_redis, clock):
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    yield bl
    bl.close()


def totals(store, org="acme", first="2026-01-01", last="2026-12-31"):
    out: dict[tuple[str, str, str, str, str], tuple[int, ...]] = {}
    for r in store.usage_rows(org, first, last):
        out[(r.team, r.user, r.agent, r.day, r.org)] = (
            r.invocations, r.input_tokens, r.output_tokens, r.total_tokens, r.cost)
    return out


def status_of(bl, subject, scope, metric="cost", period=None):
    return next(s for s in bl.status(subject) if str(s.scope) == scope
                and s.metric.value == metric and (period is None or s.period == period))


def test_flush_moves_usage_to_sql_exactly_once(limiter, make_store):
    store = make_store()
    rec = Reconciler(limiter, store)
    limiter.record(ALICE, Usage(input_tokens=100, output_tokens=10))
    d = limiter.check(BOB, Usage(input_tokens=50))
    limiter.commit(d.reservation, Usage(input_tokens=40))
    stats = rec.run_once()
    assert stats.flushes == 1 and stats.rows == 2
    assert totals(store) == {
        ("eng", "alice", "gpt", "2026-03-10", "acme"): (1, 100, 10, 110, 120),
        ("ops", "bob", "gpt", "2026-03-10", "acme"): (1, 40, 0, 40, 40),
    }
    assert rec.run_once().flushes == 0
    limiter.record(ALICE, Usage(input_tokens=1))
    rec.run_once()
    assert totals(store)[("eng", "alice", "gpt", "2026-03-10", "acme")][1] == 101
    assert store.org_seq("acme") == 2


def test_crash_between_sql_commit_and_ack_does_not_double_count(limiter, make_store):
    store = make_store()
    rec = Reconciler(limiter, store)
    limiter.record(ALICE, Usage(input_tokens=1))
    rec.run_once()  # epoch established
    limiter.record(ALICE, Usage(input_tokens=99))
    ks = limiter.keys
    seq = store.org_seq("acme")
    reply = rec._script("flush", [ks.dirty("acme"), ks.epoch("acme"), ks.pending_flush("acme")],
                        [str(seq), "flush-1", 100])
    assert reply[0] == b"moved"
    from budgetlimiter.durable.restore import parse_flush_record

    fid, rows = parse_flush_record(reply[1].decode(), ks)
    store.apply_flush("acme", fid, seq, rows)  # ... and the reconciler "dies" before the ack
    rec.run_once()
    assert totals(store)[("eng", "alice", "gpt", "2026-03-10", "acme")][1] == 100
    assert limiter.redis.get(ks.pending_flush("acme")) is None


def test_two_reconcilers_in_parallel_equal_one(limiter, make_store, fresh_redis, clock):
    store = make_store()
    stop = threading.Event()
    recs = [Reconciler(BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock,
                                     timeout=2), store) for _ in range(2)]
    threads = [threading.Thread(target=r.run_forever, args=(stop, 0.01)) for r in recs]
    for t in threads:
        t.start()
    expected_in = 0
    for i in range(300):
        subject = (ALICE, BOB)[i % 2]
        limiter.record(subject, Usage(input_tokens=i), request_id=f"r{i}")
        expected_in += i
    stop.set()
    for t in threads:
        t.join(30)
    Reconciler(limiter, store).run_once()
    rows = store.usage_rows("acme", "2026-01-01", "2026-12-31")
    assert sum(r.input_tokens for r in rows) == expected_in
    assert sum(r.invocations for r in rows) == 300


def test_kill_9_restart_restore_counters_equal_recorded_usage(make_store, redis_server,
                                                            clock):
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    # eng's daily budget is 4000 micro-USD: use all of it, plus some month budget via ops
    for _ in range(4):
        d = bl.check(ALICE, Usage(input_tokens=1000))
        bl.commit(d.reservation, Usage(input_tokens=1000))
    bl.record(BOB, Usage(input_tokens=3000))
    assert not bl.check(ALICE, Usage(input_tokens=1)).allowed
    rec.run_once()
    before = {(str(s.scope), s.metric.value, s.period): s.used for s in bl.status(ALICE)}
    redis_server.kill()  # SIGKILL, no persistence: every counter is gone
    redis_server.start()
    bl.redis.connection_pool.disconnect()
    rec.run_once()  # notices the missing epoch and restores from SQL
    after = {(str(s.scope), s.metric.value, s.period): s.used for s in bl.status(ALICE)}
    assert after == before
    assert not bl.check(ALICE, Usage(input_tokens=1)).allowed  # the reached limit stays reached
    org = status_of(bl, ALICE, "org:acme")
    assert (org.used, org.reserved) == (7000, 0)  # restored into used and held alike
    bl.close()


def test_usage_after_loss_and_before_restore_is_kept(make_store, redis_server, clock):
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    bl.record(ALICE, Usage(input_tokens=1000))
    rec.run_once()
    bl.record(ALICE, Usage(input_tokens=5))  # unflushed: lost with Redis (documented bound)
    redis_server.kill()
    redis_server.start()
    bl.redis.connection_pool.disconnect()
    bl.record(ALICE, Usage(input_tokens=200))  # after the loss, before the restore
    rec.run_once()
    org = status_of(bl, ALICE, "org:acme")
    assert (org.used, org.reserved) == (1200, 0)
    rec.run_once()
    rows = store.usage_rows("acme", "2026-01-01", "2026-12-31")
    assert sum(r.input_tokens for r in rows) == 1200


def test_restore_keeps_rollover_carry(make_store, redis_server, clock):
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    clock.set(datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    for _ in range(35):
        bl.record(BOB, Usage())
    rec.run_once()
    clock.set(datetime(2026, 3, 11, 12, tzinfo=timezone.utc))
    assert status_of(bl, BOB, "org:acme", "invocations").limit == 45  # 40 + carry 5
    redis_server.kill()
    redis_server.start()
    bl.redis.connection_pool.disconnect()
    rec.run_once()
    lim = status_of(bl, BOB, "org:acme", "invocations")
    assert (lim.limit, lim.carry) == (45, 5)


def test_a_crossing_reached_between_a_loss_and_the_restore_fires_once(make_store,
                                                                      redis_server, clock):
    """40 % is recorded and flushed; Redis loses everything; 30 % more is recorded on the
    empty counters (they see 30 %: no crossing); the restore puts back 70 %: the 50 %
    threshold fires then, once, and a second pass fires nothing."""
    redis_server.restart()
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), redis_server.url, clock=clock, timeout=2)
    rec = Reconciler(bl, store)
    bl.record(BOB, Usage(input_tokens=4000))  # $0.004 of the org's $0.01 month: 40 %
    rec.run_once()
    redis_server.kill()
    redis_server.start()
    bl.redis.connection_pool.disconnect()
    bl.record(BOB, Usage(input_tokens=3000))  # 30 % on empty counters: below 50 %
    rec.run_once()
    rec.run_once()
    fired = sorted((e.scope, e.metric, e.period, e.threshold) for e in store.events("acme")
                   if e.metric == "cost")
    assert fired == [("org:acme", "cost", "month", 50)]
    assert status_of(bl, BOB, "org:acme").used == 7000
    bl.close()


def test_threshold_events_reach_the_outbox_once(limiter, make_store):
    store = make_store()
    rec = Reconciler(limiter, store, sinks=["log", "billing"])
    for i in range(25):
        limiter.record(BOB, Usage(input_tokens=1000), request_id=f"x{i}")
    rec.run_once()
    rec.run_once()
    events = store.events("acme")
    keys = sorted((e.scope, e.metric, e.period, e.threshold) for e in events)
    assert keys == [("org:acme", "cost", "month", 50), ("org:acme", "cost", "month", 100),
                    ("org:acme", "invocations", "day", 50)]
    assert len({e.id for e in events}) == 3
    assert len(store.deliveries("pending")) == 6
    assert limiter.redis.xlen(limiter.keys.events("acme")) == 0


def test_graceful_shutdown_flushes_pending(limiter, make_store):
    store = make_store()
    rec = Reconciler(limiter, store)
    stop = threading.Event()
    stop.set()  # already asked to stop: the loop does its final pass only
    limiter.record(ALICE, Usage(input_tokens=7))
    rec.run_forever(stop, interval=60)
    assert totals(store)[("eng", "alice", "gpt", "2026-03-10", "acme")][1] == 7


def test_flush_record_rows_parse(limiter):
    from budgetlimiter.durable.restore import parse_flush_record

    key = limiter.keys.ledger(ALICE, "2026-03-10")
    fid, rows = parse_flush_record(f"abc\n{key}\tn=1\ti=5\tc=9\n", limiter.keys)
    assert fid == "abc"
    assert rows == [UsageRow("acme", "eng", "alice", "gpt", "2026-03-10", invocations=1,
                             input_tokens=5, cost=9)]


def test_scope_overview_merges_live_and_recorded(limiter, make_store, clock):
    from budgetlimiter.overview import scope_overview

    store = make_store()
    rec = Reconciler(limiter, store)
    limiter.record(ALICE, Usage(input_tokens=1000))
    rec.run_once()
    limiter.record(ALICE, Usage(input_tokens=500))  # not flushed yet
    view = scope_overview(limiter, store, "org:acme/team:eng", "cost", "day", periods=3)
    assert view["history"][-1] == ("2026-03-10", 1500)  # live beats the lagging record
    assert [h[1] for h in view["history"][:-1]] == [0, 0]
    assert view["live"][0]["used"] == "0.001500"
