"""What an admitted check reports about each limit, on both paths of check.lua: nothing is
blocked (the reply's blocking entry is 0 when every limit fits)."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")
ACCUMULATE = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate}
      - {metric: cost, amount: "1", period: day}
"""


def test_an_admitted_check_on_the_one_hincrby_path_reports_every_limit_ok(make_limiter):
    """Reset budgets that fit: the fast path admits (used is not read: None)."""
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=100))
    assert d.allowed and d.blocked_by is None
    assert [(s.used, s.state) for s in d.limits] == [(None, "ok")] * 3


def test_an_admitted_check_on_the_full_path_reports_every_limit_ok(make_limiter):
    """The first check of a period with a carry to compute takes the full path."""
    bl = make_limiter(ACCUMULATE)
    d = bl.check(ALICE, Usage(input_tokens=100))
    assert d.allowed and d.blocked_by is None
    assert [(s.taken, s.state) for s in d.limits] == [(1, "ok"), (100, "ok")]


def test_an_admitted_check_on_the_one_hincrby_path_reports_the_stored_carry(
        make_limiter, clock):
    """Day 1 uses 4 of 10 invocations; day 2's first check computes and stores the carry 6
    (full path); the second check of day 2 is admitted on the fast path, which reads the
    stored carry: limit 10 + 6, taken 2."""
    bl = make_limiter(ACCUMULATE)
    d = bl.check(ALICE, Usage(invocations=4))
    bl.commit(d.reservation, Usage(invocations=4))
    clock.advance(86_400)
    assert bl.check(ALICE, Usage()).allowed
    second = bl.check(ALICE, Usage())
    assert second.allowed
    day = second.limits[0]
    assert (day.metric, day.used, day.taken, day.carry, day.limit) == (
        "invocations", None, 2, 6, 16)


def test_an_admitted_zero_cost_check_reports_nothing_taken_and_creates_no_counter(
        make_limiter, raw_redis):
    """A check with no tokens costs 0 on ALICE's three cost budgets: the fast path reads held
    (absent: 0), reserves nothing and writes no counter; once they hold 100, it reads 100."""
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage())
    assert d.allowed
    assert [(s.taken, s.state) for s in d.limits] == [(0, "ok")] * 3
    assert list(raw_redis.scan_iter("*:c:*")) == []
    spent = bl.check(ALICE, Usage(input_tokens=100))
    bl.commit(spent.reservation, Usage(input_tokens=100))
    # on counters that exist, it reports what they hold: 100 micro-USD each
    assert [s.taken for s in bl.check(ALICE, Usage()).limits] == [100] * 3
