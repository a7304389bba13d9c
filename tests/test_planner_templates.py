"""The planner caches a subject's check layout (its counters) for the period it was built in;
a clock that moves (back, after a correction to Redis's time, or on to the next period) gets
the counters of its own time, never those of the cached period."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

ALICE = Subject("acme", "gpt", user="alice")
DAILY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day}
"""


def test_a_check_after_the_clock_went_back_a_day_counts_on_that_day(make_limiter, clock):
    bl = make_limiter(DAILY)
    clock.advance(86_400)
    assert bl.check(ALICE, Usage(invocations=2)).allowed  # day 2: the layout is cached
    clock.advance(-86_400)
    assert bl.check(ALICE, Usage(invocations=3)).allowed  # day 1 again
    assert [(s.period, s.reserved) for s in bl.status(ALICE)] == [("day", 3)]
    clock.advance(86_400)
    assert [(s.period, s.reserved) for s in bl.status(ALICE)] == [("day", 2)]


HOURLY = DAILY.replace("period: day", "period: hour")


def test_a_check_in_the_next_hour_counts_on_that_hour(make_limiter, clock):
    """The cached layout lasts until the earliest of the subject's periods ends (the hour),
    not the day."""
    bl = make_limiter(HOURLY)
    assert bl.check(ALICE, Usage(invocations=2)).allowed
    clock.advance(3600)
    assert bl.check(ALICE, Usage(invocations=3)).allowed
    assert [(s.period, s.reserved) for s in bl.status(ALICE)] == [("hour", 3)]


def test_a_check_after_the_clock_went_back_an_hour_counts_on_that_hour(make_limiter, clock):
    """The cached layout starts with the latest of the subject's periods (the hour)."""
    bl = make_limiter(HOURLY)
    clock.advance(3600)
    assert bl.check(ALICE, Usage(invocations=2)).allowed
    clock.advance(-3600)
    assert bl.check(ALICE, Usage(invocations=3)).allowed
    assert [(s.period, s.reserved) for s in bl.status(ALICE)] == [("hour", 3)]
