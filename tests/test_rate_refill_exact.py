"""A rate limit refills on the caller's time to the millisecond: one call an hour is refused
one second before the hour and admitted at the hour (a slow or fast clock would show here)."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

HOURLY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    rates:
      - {metric: invocations, limit: 1, per: hour}
"""
ALICE = Subject("acme", "gpt", user="alice")


def test_one_call_an_hour_refills_at_the_hour_not_a_second_before(make_limiter, clock):
    bl = make_limiter(HOURLY)
    assert bl.check(ALICE, Usage()).allowed
    clock.advance(3599)
    early = bl.check(ALICE, Usage())
    assert not early.allowed and early.reason == "rate_exceeded"
    clock.advance(1)
    assert bl.check(ALICE, Usage()).allowed
