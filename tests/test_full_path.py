"""Checks that take check.lua's full path (the one-HINCRBY path hands over when a carry is not
computed yet for the period, or a budget does not fit): what they admit and what they report."""

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


EXPIRING = """
timezone: UTC
reservation_ttl_seconds: 1
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day}
"""


def test_a_check_admitted_after_sweeping_an_expired_reservation_reports_used_and_reserved(
        make_limiter, clock):
    """4 used, 6 reserved by a reservation that expires, then a check of 3: the one-HINCRBY
    path sees 13 > 10 and hands over to the full path, which sweeps the expired 6 and
    admits; an admitted check reports what is taken: 4 used + this check's 3."""
    bl = make_limiter(EXPIRING)
    bl.engine.sweep_sampler = lambda: False  # no sampled sweep: the refusal path sweeps
    d = bl.check(ALICE, Usage(invocations=4))
    bl.commit(d.reservation, Usage(invocations=4))
    assert bl.check(ALICE, Usage(invocations=6)).allowed
    clock.advance(2)  # the 6 expire, still held until swept
    late = bl.check(ALICE, Usage(invocations=3))
    assert late.allowed
    day = next(s for s in late.limits if s.period == "day")
    assert (day.used, day.reserved, day.taken) == (None, None, 7)
    assert late.remaining(day.scope, "invocations") == 3


MONTH_AND_DAY = """
timezone: UTC
reservation_ttl_seconds: 1
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: month}
    defaults:
      user:
        limits:
          - {metric: invocations, amount: 100, period: day}
"""


def test_a_counter_created_by_the_full_path_expires_with_its_period(make_limiter, clock,
                                                                    raw_redis):
    """The month is full with 6 expired units when the next day begins: the first check of
    the day hands over to the full path at the month budget (13 > 10), sweeps, admits, and
    creates the user's counter for the new day there, which must get the day's expiry."""
    bl = make_limiter(MONTH_AND_DAY)
    bl.engine.sweep_sampler = lambda: False
    d = bl.check(ALICE, Usage(invocations=4))
    bl.commit(d.reservation, Usage(invocations=4))
    assert bl.check(ALICE, Usage(invocations=6)).allowed  # expires in a second
    clock.advance(86400)  # the next day (12:00): a new user counter, the same month
    assert bl.check(ALICE, Usage(invocations=3)).allowed
    day = next(s for s in bl.status(ALICE) if s.period == "day")
    assert (day.used, day.reserved) == (0, 3)
    counters = list(raw_redis.scan_iter(match=bl.keys.counter_pattern("acme")))
    assert counters and all(raw_redis.pttl(k) > 0 for k in counters)


BIG_DAY = """
timezone: UTC
reservation_ttl_seconds: 1
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs: {acme: {limits: [{metric: invocations, amount: 100000, period: day}]}}
"""


def test_a_sampled_sweep_refunds_at_most_1000_expired_reservations(make_limiter, clock,
                                                                   raw_redis):
    """The sampled sweep does bounded work: of 1050 expired reservations it refunds 1000 (ten
    rounds of 100) and leaves 50 for the next one; the check's own reservation is live."""
    bl = make_limiter(BIG_DAY)
    assert all(d.allowed for d in bl.check_batch([(ALICE, Usage(invocations=1))] * 1050))
    clock.advance(2)
    bl.engine.sweep_sampler = lambda: True
    assert bl.check(ALICE, Usage(invocations=1)).allowed
    assert raw_redis.zcard(bl.keys.reservations_by_expiry("acme")) == 51
    day = bl.status(ALICE)[0]  # a status read sweeps everything
    assert (day.used, day.reserved) == (0, 1)


ZERO_COST_DAYS = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.00001", period: day, rollover: accumulate,
         rollover_cap: "0.000005"}
"""


def test_a_previous_day_that_holds_only_a_carry_carries_its_unused_budget(make_limiter,
                                                                          clock):
    """Day 1 sees only calls that cost nothing: its counter holds a carry (0) and no usage.
    Day 2 carries day 1's unused 10 micro-USD, capped at 5: its limit is 15."""
    bl = make_limiter(ZERO_COST_DAYS)
    assert bl.check(ALICE, Usage(invocations=1)).allowed  # costs 0: stores day 1's carry
    clock.advance(86400)
    d = bl.check(ALICE, Usage(input_tokens=15))  # exactly 10 + 5
    assert d.allowed
    day = bl.status(ALICE)[0]
    assert (day.carry, day.reserved) == (5, 15)


DAY_AND_RATE = """
timezone: UTC
reservation_ttl_seconds: 1
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day}
    rates:
      - {metric: invocations, limit: 2, per: minute}
"""


def test_a_rate_refusal_does_not_sweep_and_reports_what_is_still_held(make_limiter, clock):
    """The sweep runs on status reads, before a refusal by a budget and before a carry: a
    refusal by a rate limit does neither, so an expired reservation not yet swept is still
    reported as reserved (1 expired + 1 live), and a status read then sweeps it (1)."""
    bl = make_limiter(DAY_AND_RATE)
    bl.engine.sweep_sampler = lambda: False
    assert bl.check(ALICE, Usage(invocations=1)).allowed  # expires in a second
    clock.advance(2)
    assert bl.check(ALICE, Usage(invocations=1)).allowed  # the rate's second unit
    refused = bl.check(ALICE, Usage(invocations=1))
    assert not refused.allowed and refused.reason == "rate_exceeded"
    day = next(s for s in refused.limits if s.period == "day")
    assert (day.used, day.reserved) == (0, 2)
    assert (bl.status(ALICE)[0].used, bl.status(ALICE)[0].reserved) == (0, 1)


def test_a_rate_refusal_with_a_stored_capped_carry_does_not_sweep(make_limiter, clock):
    """As above with the day accumulating, capped at 0: the first check stores the carry
    (0), so the rate refusal reads it and has no carry to compute: no sweep either."""
    bl = make_limiter(DAY_AND_RATE.replace("period: day}",
                                           "period: day, rollover: accumulate, rollover_cap: 0}"))
    bl.engine.sweep_sampler = lambda: False
    assert bl.check(ALICE, Usage(invocations=1)).allowed  # expires in a second
    clock.advance(2)
    assert bl.check(ALICE, Usage(invocations=1)).allowed
    refused = bl.check(ALICE, Usage(invocations=1))
    assert not refused.allowed and refused.reason == "rate_exceeded"
    day = next(s for s in refused.limits if s.period == "day")
    assert (day.used, day.reserved, day.carry) == (0, 2, 0)


DAY_AND_HOUR_CARRY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.000010", period: day, rollover: accumulate}
      - {metric: cost, amount: "1", period: hour, rollover: accumulate}
"""


def test_a_zero_cost_check_on_the_full_path_fits_within_the_carry(make_limiter, clock):
    """The day's limit is 10 micro-USD; day 2 carries day 1's unused 10 (limit 20) and has
    used 15. A new hour's first check computes the hour's carry (the full path): a check of zero
    cost is admitted there, 15 being under 10 + 10."""
    bl = make_limiter(DAY_AND_HOUR_CARRY)
    assert bl.check(ALICE, Usage()).allowed  # day 1: stores its carry (0), uses nothing
    clock.advance(86_400)
    spent = bl.check(ALICE, Usage(input_tokens=15))
    bl.commit(spent.reservation, Usage(input_tokens=15))
    clock.advance(3600)
    d = bl.check(ALICE, Usage())
    assert d.allowed
    day = next(s for s in d.limits if s.period == "day")
    assert (day.taken, day.carry, day.limit) == (15, 10, 20)


def test_an_admitted_check_on_the_full_path_creates_no_counter_it_reserves_nothing_on(
        make_limiter, raw_redis):
    """The first check of a day computes the day's carry (the full path); the call costs
    nothing, so the weekly cost budget gets no counter."""
    bl = make_limiter("""
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate}
      - {metric: cost, amount: "1", period: week}
""")
    d = bl.check(ALICE, Usage())
    assert d.allowed
    assert [s.taken for s in d.limits] == [1, 0]
    assert list(raw_redis.scan_iter("*:c:o:week:*")) == []


def test_a_counter_created_on_the_full_path_gets_its_period_expiry(make_limiter, raw_redis):
    """The first check of a day computes the day's carry (the full path) and reserves 1
    invocation on the week's counter, which it creates: it lives to the week's end (more
    than an hour away), not the minimum second."""
    bl = make_limiter("""
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate}
      - {metric: invocations, amount: 50, period: week}
""")
    assert bl.check(ALICE, Usage()).allowed
    (week,) = raw_redis.scan_iter("*:c:o:week:*")
    assert raw_redis.pttl(week) > 3_600_000


def test_a_check_admitted_after_a_sweep_leaves_an_untouched_budget_alone(make_limiter, clock,
                                                                         raw_redis):
    """6 of 10 invocations reserved and expired; a check of 5 calls that cost nothing does
    not fit beside them (the fast path hands over), fits after the sweep, and the weekly
    cost budget it reserves nothing on gets no counter."""
    bl = make_limiter("""
timezone: UTC
reservation_ttl_seconds: 1
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day}
      - {metric: cost, amount: "1", period: week}
""")
    bl.engine.sweep_sampler = lambda: False
    assert bl.check(ALICE, Usage(invocations=6)).allowed
    clock.advance(2)
    d = bl.check(ALICE, Usage(invocations=5))
    assert d.allowed
    assert [s.taken for s in d.limits] == [5, 0]
    assert list(raw_redis.scan_iter("*:c:o:week:*")) == []


def test_a_refused_check_leaves_no_counter_on_a_budget_it_reserved_nothing_on(make_limiter,
                                                                            raw_redis):
    """1 invocation a day, and a weekly cost budget the calls (no tokens) cost nothing on:
    the second call is refused by the day, and undoing the one-HINCRBY path's reservations
    writes nothing to the week."""
    bl = make_limiter("""
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "1", period: week}
      - {metric: invocations, amount: 1, period: day}
""")
    assert bl.check(ALICE, Usage()).allowed
    refused = bl.check(ALICE, Usage())
    assert not refused.allowed and refused.blocked_by.period == "day"
    assert list(raw_redis.scan_iter("*:c:o:week:*")) == []
