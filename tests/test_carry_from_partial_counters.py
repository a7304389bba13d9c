"""The carry of a period (rollover: accumulate) from a previous-period counter that lost some
of its fields: Redis evicted the counter while a reservation on it was open, and the commit
recreated it with ``used`` only (an exact commit does not move ``held``; with no thresholds
it stores no carry either)."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

ACCUMULATE = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate,
         thresholds: []}
"""
ALICE = Subject("acme", "gpt", user="alice")


def day_of(statuses):
    return next(s for s in statuses if s.period == "day")


def test_a_previous_day_holding_only_used_carries_the_limit_minus_used(
        make_limiter, clock, raw_redis):
    """3 invocations reserved, the day's counter evicted, the 3 committed: the counter is
    recreated as u:n = 3 with no h:n and no c:n. The next day carries 10 - 3 = 7."""
    bl = make_limiter(ACCUMULATE)
    d = bl.check(ALICE, Usage(invocations=3))
    assert d.allowed
    (counter,) = raw_redis.scan_iter("*:c:o:day:*")
    assert raw_redis.delete(counter) == 1
    bl.commit(d.reservation, Usage(invocations=3))
    assert raw_redis.hgetall(counter) == {b"u:n": b"3"}
    clock.advance(86_400)
    day = day_of(bl.status(ALICE))
    assert (day.used, day.reserved, day.carry) == (0, 0, 7)


ACCUMULATE_COST = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.000010", period: day, rollover: accumulate}
"""


def test_a_day_with_only_a_zero_cost_check_passes_its_carry_on(make_limiter, clock, raw_redis):
    """A limit of 10 micro-USD a day: day 1 spends 4 (carry 6 into day 2); day 2 has only a
    check of zero cost, which stores the carry c:c = 6 and nothing else; day 3 carries day 2's
    unused 10 + 6 - 0 = 16."""
    bl = make_limiter(ACCUMULATE_COST)
    d = bl.check(ALICE, Usage(input_tokens=4))
    bl.commit(d.reservation, Usage(input_tokens=4))
    (day1,) = raw_redis.scan_iter("*:c:o:day:*")
    clock.advance(86_400)
    assert bl.check(ALICE, Usage()).allowed
    (day2,) = set(raw_redis.scan_iter("*:c:o:day:*")) - {day1}
    assert raw_redis.hgetall(day2) == {b"c:c": b"6"}
    clock.advance(86_400)
    day = day_of(bl.status(ALICE))
    assert (day.used, day.reserved, day.carry) == (0, 0, 16)


def test_a_previous_day_recreated_by_a_refund_carries_at_most_its_limit(
        make_limiter, clock, raw_redis):
    """1 invocation reserved, the day's counter evicted, the reservation released: the
    refund recreates the counter as h:n = -1 (nothing else). Held below zero is no usage, not
    negative usage: the next day carries 10 - 0 = 10, not 10 + 1."""
    bl = make_limiter(ACCUMULATE)
    d = bl.check(ALICE, Usage(invocations=1))
    (counter,) = raw_redis.scan_iter("*:c:o:day:*")
    assert raw_redis.delete(counter) == 1
    bl.release(d.reservation)
    assert raw_redis.hgetall(counter) == {b"h:n": b"-1"}
    clock.advance(86_400)
    day = day_of(bl.status(ALICE))
    assert (day.used, day.reserved, day.carry) == (0, 0, 10)


def test_a_previous_day_overshot_by_one_carries_nothing(make_limiter, clock):
    """An estimate of 1 committed as 11 (an overshoot, recorded truthfully) on a limit of 10:
    the day ends 1 over its limit, and the next day carries 0, not -1."""
    bl = make_limiter(ACCUMULATE)
    d = bl.check(ALICE, Usage(invocations=1))
    bl.commit(d.reservation, Usage(invocations=11))
    clock.advance(86_400)
    day = day_of(bl.status(ALICE))
    assert (day.used, day.reserved, day.carry, day.limit) == (0, 0, 0, 10)
