"""Rollover (``accumulate``) over several periods, against numbers worked out by hand.

The rule (README "Semantics", lua/lib.lua ``carry_from``): the first check of a period carries
``limit + carry - held`` of the previous period into it (held = used + still-open reservations,
expired ones refunded first), never below 0, at most ``rollover_cap``; a previous period with
no counter carries nothing. Every test runs on memory:// and a real redis-server, sync and
asyncio, with an injected clock. Policies are UTC with a daily invocation budget of 10, so
one check (one invocation) is one unit and a day is a period.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from budgetlimiter import Subject, Usage

S = Subject("acme", "gpt")


def policy(rollover: str = "accumulate", cap: int | None = None,
           thresholds: str = "") -> str:
    extra = f", rollover: {rollover}" if rollover else ""
    extra += f", rollover_cap: {cap}" if cap is not None else ""
    extra += f", thresholds: [{thresholds}]" if thresholds else ""
    return f"""
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {{input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {{metric: invocations, amount: 10, period: day{extra}}}
"""


def day(n: int, hour: int = 12, minute: int = 0) -> datetime:
    """Day ``n`` of the test (day 1 is 2026-03-10)."""
    return datetime(2026, 3, 9 + n, hour, minute, tzinfo=timezone.utc)


def spend(bl: Any, n: int) -> int:
    """Up to ``n`` checks, each committed at once; returns how many were admitted."""
    admitted = 0
    for _ in range(n):
        d = bl.check(S)
        if d.allowed:
            bl.commit(d.reservation, Usage())
            admitted += 1
    return admitted


def touch(bl: Any) -> None:
    """Create the day's counter without spending: a check released at once (a period with
    no counter at all carries nothing, so an idle day needs this to carry its budget)."""
    d = bl.check(S)
    assert d.allowed
    bl.release(d.reservation)


def budget(bl: Any) -> Any:
    (lim,) = bl.status(S)
    return lim


# ------------------------------------------------------------------ several periods

@pytest.mark.parametrize(("rollover", "cap", "admitted"), [
    # day 1 spends 4 (6 unused); day 2 spends 3 of 10 + carry; day 3 spends all it has
    #   accumulate, no cap: day 2 carry 6 -> 16; day 3 carry 10 + 6 - 3 = 13 -> 23
    ("accumulate", None, (4, 3, 23)),
    #   cap 5: day 2 carry min(6, 5) = 5 -> 15; day 3 carry min(10 + 5 - 3, 5) = 5 -> 15
    ("accumulate", 5, (4, 3, 15)),
    #   cap 0 carries nothing (not "no cap"): 10 every day
    ("accumulate", 0, (4, 3, 10)),
    #   reset: 10 every day
    ("", None, (4, 3, 10)),
], ids=["uncapped", "cap5", "cap0", "reset"])
def test_rollover_over_three_days_carries_the_carry_when_accumulating(
        make_limiter, clock, rollover, cap, admitted):
    bl = make_limiter(policy(rollover, cap))
    clock.set(day(1))
    assert spend(bl, 4) == admitted[0]
    clock.set(day(2))
    assert spend(bl, 3) == admitted[1]
    clock.set(day(3))
    assert spend(bl, 40) == admitted[2]
    lim = budget(bl)
    assert (lim.limit, lim.carry, lim.used) == (admitted[2], admitted[2] - 10, admitted[2])
    # day 3 used everything it had: day 4 starts from the plain limit whatever the rule
    clock.set(day(4))
    assert spend(bl, 40) == 10


def test_uncapped_accumulate_keeps_carrying_what_is_never_used(make_limiter, clock):
    """Four idle days (each touched, so each has a counter): 10, 20, 30, 40 of budget."""
    bl = make_limiter(policy())
    for n, expected in zip(range(1, 5), (10, 20, 30, 40), strict=True):
        clock.set(day(n))
        touch(bl)
        lim = budget(bl)
        assert (lim.limit, lim.carry) == (expected, expected - 10), n
    clock.set(day(5))
    assert spend(bl, 100) == 50  # 10 + the 40 carried from day 4


def test_capped_carry_of_a_carry_counts_the_previous_carry_before_the_cap(
        make_limiter, clock):
    """Day 1 idle: carry min(10, 5) = 5. Day 2 spends 7 of 15: 10 + 5 - 7 = 8 unused, capped
    to 5 (ignoring the previous carry would give 10 - 7 = 3). Day 3: 15."""
    bl = make_limiter(policy(cap=5))
    clock.set(day(1))
    touch(bl)
    clock.set(day(2))
    assert spend(bl, 7) == 7
    assert budget(bl).carry == 5
    clock.set(day(3))
    assert spend(bl, 40) == 15
    assert budget(bl).carry == 5


def test_a_day_without_any_counter_breaks_the_chain_of_carries(make_limiter, clock):
    """Day 1 leaves 10 unused, day 2 has no check at all (no counter): day 3 carries
    nothing from day 2, and day 1's budget is not reached back for."""
    bl = make_limiter(policy())
    clock.set(day(1))
    touch(bl)
    clock.set(day(3))
    assert spend(bl, 40) == 10
    assert budget(bl).carry == 0


# ------------------------------------------------------------------ the cap, exactly

@pytest.mark.parametrize(("spent", "carry"), [
    (6, 4),  # unused 4 = cap - 1: carried whole
    (5, 5),  # unused 5 = cap: carried whole
    (4, 5),  # unused 6 = cap + 1: capped to 5
])
def test_carry_is_the_unused_budget_up_to_the_cap(make_limiter, clock, spent, carry):
    bl = make_limiter(policy(cap=5))
    clock.set(day(1))
    assert spend(bl, spent) == spent
    clock.set(day(2))
    assert spend(bl, 40) == 10 + carry
    lim = budget(bl)
    assert (lim.limit, lim.carry, lim.used) == (10 + carry, carry, 10 + carry)


# ------------------------------------------------------------------ open reservations

@pytest.mark.parametrize("sampled_sweep", [True, False], ids=["sampled", "unsampled"])
def test_reservations_open_across_the_boundary_count_as_spent_and_expired_ones_do_not(
        make_limiter, clock, sampled_sweep):
    """Day 1 at 23:30: 2 committed, 3 reserved until 00:30 (they expire), 1 reserved for a
    day (still open). Day 2 at 01:00: the 3 expired ones are refunded before the carry is
    computed (whichever sweep path runs first), the open one counts as spent:
    carry = 10 - 2 - 1 = 7, so day 2 admits 17."""
    bl = make_limiter(policy())
    bl.engine.sweep_sampler = lambda: sampled_sweep
    clock.set(day(1, 23, 30))
    assert spend(bl, 2) == 2
    for _ in range(3):
        assert bl.check(S, ttl=3600).allowed
    open_one = bl.check(S, ttl=86400)
    assert open_one.allowed
    clock.set(day(2, 1))
    assert spend(bl, 40) == 17
    assert budget(bl).carry == 7
    # the open reservation settles in the old period later: the carry does not move
    bl.commit(open_one.reservation, Usage(invocations=0))
    assert (budget(bl).limit, budget(bl).carry) == (17, 7)


def test_a_refused_first_check_of_a_period_stores_no_carry(make_limiter, clock):
    """The carry is written by an admitted check only; a refusal (here by an estimate larger
    than limit + carry) or a status read computes it and changes nothing."""
    bl = make_limiter(policy(cap=5))
    clock.set(day(1))
    assert spend(bl, 8) == 8  # 2 unused
    clock.set(day(2))
    assert not bl.check(S, Usage(invocations=13)).allowed  # 13 > 10 + 2
    assert budget(bl).carry == 2  # computed for the read, same answer
    assert bl.check(S, Usage(invocations=12)).allowed  # exactly limit + carry


# ------------------------------------------------------------------ thresholds

def test_thresholds_are_judged_against_the_limit_plus_the_carry(make_limiter, clock):
    """Day 1 idle: carry 10, so day 2's effective limit is 20. 50 % fires at 10 used (not
    at 5), 100 % at 20 (not at 10); each once."""
    bl = make_limiter(policy(thresholds="50, 100"))
    clock.set(day(1))
    touch(bl)
    clock.set(day(2))
    fired: list[tuple[int, int, int]] = []
    for _ in range(25):
        d = bl.check(S)
        if d.allowed:
            r = bl.commit(d.reservation, Usage())
            fired += [(t.threshold, t.used, t.limit) for t in r.thresholds]
    assert fired == [(50, 10, 20), (100, 20, 20)]


def test_thresholds_of_records_alone_see_the_carry(make_limiter, clock):
    """record() never checks, so no check stored day 2's carry: the threshold must still be
    judged against limit + carry (20), not the bare limit."""
    bl = make_limiter(policy(thresholds="50, 100"))
    clock.set(day(1))
    touch(bl)
    clock.set(day(2))
    fired: list[tuple[int, int, int]] = []
    for _ in range(20):
        fired += [(t.threshold, t.used, t.limit) for t in bl.record(S, Usage()).thresholds]
    assert fired == [(50, 10, 20), (100, 20, 20)]
