"""What a settle reports beyond its status: the overshoot flag (an actual above the estimate)
belongs to the commit that counted it, not to its duplicates."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine.calls import ScriptCall
from budgetlimiter.engine.scripts import Registry
from budgetlimiter.engine.settle_plan import dirty_follow_up

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
    finally:
        r.close()
        bl.close()
