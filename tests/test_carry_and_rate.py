"""A check that takes the full path (the first of a period computes a budget's rollover carry)
while a rate limit fits: admitted, reserved on the budget and charged on the rate."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

ACCUMULATE_AND_RATE = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate, rollover_cap: 5}
    rates:
      - {metric: invocations, limit: 2, per: minute}
"""
ALICE = Subject("acme", "gpt", user="alice")


def test_the_first_check_of_a_period_with_a_carry_and_a_fitting_rate_is_admitted(
        make_limiter):
    bl = make_limiter(ACCUMULATE_AND_RATE)
    first = bl.check(ALICE, Usage())
    assert first.allowed and first.blocked_by is None
    assert bl.check(ALICE, Usage()).allowed  # the rate's second unit
    third = bl.check(ALICE, Usage())  # the rate (2 a minute) is spent, the budget is not
    assert not third.allowed and third.reason == "rate_exceeded"
    day = next(s for s in bl.status(ALICE) if s.period == "day")
    assert (day.used, day.reserved, day.carry) == (0, 2, 0)
