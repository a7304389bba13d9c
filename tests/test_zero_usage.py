"""Usage of zero counts nothing and fires nothing: a zero-cost call recorded against a budget
of zero (whose every threshold is "reached" by any usage at all) crosses no threshold; the
first call that costs something crosses them all at once."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

ZERO_BUDGET = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0", period: day, thresholds: [50, 100]}
"""
ALICE = Subject("acme", "gpt", user="alice")


def test_a_zero_cost_record_crosses_no_threshold_of_a_zero_budget(make_limiter):
    bl = make_limiter(ZERO_BUDGET)
    free = bl.record(ALICE, Usage(invocations=1))
    assert free.status == "recorded" and free.thresholds == ()
    paid = bl.record(ALICE, Usage(input_tokens=1))
    assert sorted(t.threshold for t in paid.thresholds) == [50, 100]
