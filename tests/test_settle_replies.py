"""What a settle reports beyond its status: the overshoot flag (an actual above the estimate)
belongs to the commit that counted it, not to its duplicates."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

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
