"""What a settle reports beyond its status (the overshoot flag belongs to the commit that
counted it, not to its duplicates or a release; the Cluster dirty follow-up), and how a settle
that judges thresholds gets the period's carry."""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine.calls import ScriptCall
from budgetlimiter.engine.scripts import Registry
from budgetlimiter.engine.settle_plan import dirty_follow_up
from budgetlimiter.usage import Amounts

ALICE = Subject("acme", "gpt", user="alice")
POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day}
      - {metric: cost, amount: "1", period: day}
"""


def test_a_duplicate_of_an_overshooting_commit_reports_no_overshoot_and_counts_nothing(
        make_limiter):
    """Estimate 100 input tokens, actual 300: the commit counts 300 micro-USD and says
    overshoot; the same commit again is a duplicate: no overshoot, nothing counted."""
    bl = make_limiter(POLICY)
    d = bl.check(ALICE, Usage(input_tokens=100))
    first = bl.commit(d.reservation, Usage(input_tokens=300))
    assert (first.status, first.overshoot) == ("committed", True)
    again = bl.commit(d.reservation, Usage(input_tokens=300))
    assert (again.status, again.overshoot, again.actual) == ("duplicate", False, None)
    cost = next(s for s in bl.status(ALICE) if s.metric == "cost")
    assert (cost.used, cost.reserved) == (300, 0)


@pytest.mark.redis
def test_only_a_settle_that_makes_the_first_dirty_ledger_asks_for_the_cluster_follow_up(
        fresh_redis, clock):
    """On Redis Cluster settle.lua cannot reach the global dirty set (another slot), so its
    reply says when the client must add the org (dirty_follow_up). A release counts nothing:
    never; the first commit of the org: yes; a second one: no (the org is dirty already)."""
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2.0)
    r = fresh_redis.client()
    settle = bl.engine.planners.settle

    def follow_up(call: ScriptCall) -> bool:
        source = Registry.default()[call.script].source
        return dirty_follow_up(call, r.eval(source, len(call.keys), *call.keys, *call.args),
                               cluster=True)

    try:
        released, first, second = (bl.check(ALICE, Usage(input_tokens=100)) for _ in "abc")
        assert not follow_up(settle.plan_release("acme", released.reservation.id, clock()))
        assert follow_up(settle.plan_commit(first.reservation, Usage(input_tokens=100),
                                            clock()))
        assert not follow_up(settle.plan_commit(second.reservation, Usage(input_tokens=100),
                                                clock()))
        # a flush empties the org's dirty set: the next first dirty ledger asks again, also
        # from a commit of an expired reservation (3) and one counted from its plan (4)
        dirty = bl.engine.planners.core.keys.dirty("acme")
        expired = bl.check(ALICE, Usage(input_tokens=100), ttl=1)
        clock.advance(2)
        bl.status(ALICE)  # sweeps it
        r.delete(dirty)
        late = settle.plan_commit(expired.reservation, Usage(input_tokens=100), clock())
        reply = r.eval(Registry.default()["settle"].source, len(late.keys), *late.keys,
                       *late.args)
        assert int(reply[0]) == 3 and dirty_follow_up(late, reply, cluster=True)
        r.delete(dirty)
        forgotten = settle.plan_commit_by_id("acme", "never-seen", Amounts(invocations=1),
                                             clock(), subject=ALICE)
        reply = r.eval(Registry.default()["settle"].source, len(forgotten.keys),
                       *forgotten.keys, *forgotten.args)
        assert int(reply[0]) == 4 and dirty_follow_up(forgotten, reply, cluster=True)
    finally:
        r.close()
        bl.close()


def test_a_release_reports_no_overshoot(make_limiter):
    bl = make_limiter(POLICY)
    d = bl.check(ALICE, Usage(input_tokens=100))
    released = bl.release(d.reservation)
    assert (released.status, released.overshoot) == ("released", False)


ACCUMULATE = """
timezone: UTC
reservation_ttl_seconds: 60
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate}
"""


def test_a_record_that_computes_the_carry_first_refunds_expired_reservations(
        make_limiter, clock):
    """Day 1: 6 reserved and never settled (the caller crashed). Day 2 begins with a
    record of 1, before any check: it computes day 2's carry as a check would, after
    refunding the expired 6, so day 1 carries all of its 10."""
    bl = make_limiter(ACCUMULATE)
    bl.engine.sweep_sampler = lambda: False
    assert bl.check(ALICE, Usage(invocations=6)).allowed
    clock.advance(86_400)
    assert bl.record(ALICE, Usage(invocations=1)).status == "recorded"
    day = next(s for s in bl.status(ALICE) if s.period == "day")
    assert (day.used, day.reserved, day.carry, day.limit) == (1, 0, 10, 20)


@pytest.mark.redis
def test_a_plan_from_before_the_carry_field_judges_thresholds_against_the_limit_alone(
        fresh_redis):
    """A record whose plan line has a bare -1 carry (written before plans named the previous
    period; still stored in reservations across an upgrade): its carry counts as 0. Limit
    10, thresholds 50 and 100: 5 reaches the 50 exactly (not of 11), 9 does not reach the
    100 (of 9 it would)."""
    r = fresh_redis.client()
    source = Registry.default()["settle"].source
    base = "bl:{acme}"
    counter, ledger = f"{base}:c:o:day:2026-03-10", f"{base}:l:o/a=gpt:2026-03-10"
    now = 1_773_144_000_000
    plan = f"|0|{ledger}\nc\t{counter}\tn\t0\t10\t-1\t50,100\t{now + 86_400_000}\n"

    def record(request_id: str, n: int) -> list[Any]:
        keys = [f"{base}:d:{request_id}", f"{base}:rx", f"{base}:dirty", f"{base}:ev",
                "bl:dirty-orgs"]
        return list(r.eval(source, len(keys), *keys, now, "record", 60_000, 0, "acme", plan,
                           now + 86_400_000, n, 0, 0, 0, 0, -1))

    try:
        assert record("a", 5)[3:] == [counter.encode(), b"n", 50, 5, 10]
        assert record("b", 4)[3:] == []
        assert r.hget(counter, "u:n") == b"9"
    finally:
        r.close()


RESET = ACCUMULATE.replace(", rollover: accumulate", "").replace("amount: 10,", "amount: 10, "
                                                                  "thresholds: [50],")


def test_a_budget_changed_to_reset_judges_thresholds_against_its_limit_alone(make_limiter,
                                                                            clock):
    """Day 2 of an accumulating budget stores its carry (day 1's unused 10); the policy then
    changes it to reset mid-day: a record of 5 reaches 50 % of 10 (the stored carry no
    longer counts)."""
    before = make_limiter(ACCUMULATE)
    assert before.check(ALICE, Usage(invocations=0)).allowed  # day 1: carry 0, nothing used
    clock.advance(86_400)
    assert before.check(ALICE, Usage(invocations=0)).allowed  # stores day 2's carry 10
    assert next(s for s in before.status(ALICE)).carry == 10
    after = make_limiter(RESET)
    recorded = after.record(ALICE, Usage(invocations=5))
    assert [(t.threshold, t.used, t.limit) for t in recorded.thresholds] == [(50, 5, 10)]


def test_a_threshold_of_100_percent_of_101_fires_at_101_not_100(make_limiter):
    bl = make_limiter(RESET.replace("amount: 10, thresholds: [50]",
                                    "amount: 101, thresholds: [100]"))
    assert bl.record(ALICE, Usage(invocations=100)).thresholds == ()
    assert [t.threshold for t in bl.record(ALICE, Usage(invocations=1)).thresholds] == [100]


def test_a_ledger_holds_only_the_metrics_a_settle_counted(make_limiter, raw_redis):
    """A record of one call with no tokens: 1 invocation, nothing else, in the day's ledger
    (the reconciler flushes what is there)."""
    bl = make_limiter(POLICY)
    bl.record(ALICE, Usage(invocations=1))
    (ledger,) = raw_redis.scan_iter("*:l:*")
    assert raw_redis.hgetall(ledger) == {b"n": b"1"}


@pytest.mark.redis
def test_a_settle_planned_for_redis_cluster_leaves_the_global_dirty_set_to_the_client(
        fresh_redis, clock):
    """On Redis Cluster the planner sends no KEYS[5] (P:dirty-orgs is in another slot):
    settle.lua then counts, marks the org's ledger dirty and says so, and touches no global
    key (shown on one node by planning as for a cluster)."""
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2.0)
    r = fresh_redis.client()
    try:
        bl.engine.planners.core.cluster = True
        call = bl.engine.planners.settle.plan_record(ALICE, Usage(invocations=1), clock(), "q1")
        assert len(call.keys) == 4
        reply = r.eval(Registry.default()["settle"].source, 4, *call.keys, *call.args)
        assert [int(v) for v in reply[:3]] == [1, 1, 0]
        assert r.exists(bl.engine.planners.core.keys.dirty_orgs) == 0
    finally:
        r.close()
        bl.close()


def test_one_record_reports_each_crossing_with_its_own_metric_and_usage(make_limiter):
    """5 invocations of 10 and 300 micro-USD of 600 in one record: crossings of 50 % and of
    40 %."""
    bl = make_limiter("""
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, thresholds: [50]}
      - {metric: cost, amount: "0.000600", period: day, thresholds: [40]}
""")
    recorded = bl.record(ALICE, Usage(input_tokens=300, invocations=5))
    assert [(t.metric.value, t.threshold, t.used, t.limit) for t in recorded.thresholds] == [
        ("invocations", 50, 5, 10), ("cost", 40, 300, 600)]
