"""Both expiry-sweep paths of ``check.lua``, forced, in every run and on every row.

An admitted check sweeps expired reservations on about one check in eight (the *sampled*
sweep); every other check leaves them alone until a refusal (or a carry, or a status read)
runs the *full* sweep first. Which one a check takes used to come from ``os.urandom`` inside
the reservation id, so a test could exercise one path or the other from run to run. The
engine's ``sweep_sampler`` hook decides it here, and each test reads Redis's own counters
(``h:`` = used + reserved) to see which path ran.
"""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter import Subject, Usage
from budgetlimiter.errors import ReservationExists

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def force_sweep(bl: Any, sweep: bool) -> None:
    """Make every check of ``bl`` run (True) or skip (False) the sampled expiry sweep."""
    bl.engine.sweep_sampler = (lambda: True) if sweep else (lambda: False)


def team_held(raw_redis: Any) -> int:
    """``h:c`` (cost used + reserved) of the eng team's day counter, as Redis has it."""
    keys = list(raw_redis.scan_iter("*:c:o/t=eng:day:*"))
    assert len(keys) == 1, keys
    return int(raw_redis.hget(keys[0], "h:c"))


def live_reservations(raw_redis: Any) -> int:
    return int(raw_redis.zcard(next(iter(raw_redis.scan_iter("*:rx")))))


def test_sampled_sweep_refunds_an_expired_reservation_when_a_check_is_admitted(
        make_limiter, clock, raw_redis):
    bl = make_limiter(BASIC)
    force_sweep(bl, True)
    bl.check(ALICE, Usage(input_tokens=800), ttl=30)  # 800 micro-USD of the team's 1000
    clock.advance(31)  # expired, not yet refunded: nothing ran since
    assert (team_held(raw_redis), live_reservations(raw_redis)) == (800, 1)
    # 100 fits beside the expired 800 (900 <= 1000): admitted on the fast path, and its
    # sampled sweep refunds the 800 on the way: held 100, one live reservation (this one)
    assert bl.check(ALICE, Usage(input_tokens=100)).allowed
    assert (team_held(raw_redis), live_reservations(raw_redis)) == (100, 1)


def test_without_the_sampled_sweep_an_expired_reservation_stays_until_a_refusal_sweeps(
        make_limiter, clock, raw_redis):
    bl = make_limiter(BASIC)
    force_sweep(bl, False)
    bl.check(ALICE, Usage(input_tokens=800), ttl=30)
    clock.advance(31)
    # admitted without a sweep: the expired 800 is still held beside the new 100
    assert bl.check(ALICE, Usage(input_tokens=100)).allowed
    assert (team_held(raw_redis), live_reservations(raw_redis)) == (900, 2)
    # 500 does not fit 900 + 500 > 1000 on the fast path; the full path sweeps first
    # (refunds the 800), reads 100 + 500 <= 1000 and admits: held 600
    d = bl.check(ALICE, Usage(input_tokens=500))
    assert d.allowed
    assert (team_held(raw_redis), live_reservations(raw_redis)) == (600, 2)
    # the refusal path itself: 600 + 500 > 1000 even after the (empty) sweep
    refused = bl.check(ALICE, Usage(input_tokens=500))
    assert not refused.allowed and refused.blocked_by is not None
    assert (refused.blocked_by.used, refused.blocked_by.reserved) == (0, 600)
    assert team_held(raw_redis) == 600  # the refusal undid its own reservation


@pytest.mark.parametrize("sweep", [True, False], ids=["sampled", "unsampled"])
def test_a_caller_reservation_id_takes_the_path_the_sampler_picks(
        make_limiter, clock, raw_redis, sweep):
    """A caller's id (ARGV[4] = 2, or 6 with the sweep) still refuses a reused id and still
    obeys the sampler."""
    bl = make_limiter(BASIC)
    force_sweep(bl, sweep)
    bl.check(ALICE, Usage(input_tokens=800), ttl=30)
    clock.advance(31)
    d = bl.check(ALICE, Usage(input_tokens=100), reservation_id="req-1")
    assert d.allowed
    assert team_held(raw_redis) == (100 if sweep else 900)
    with pytest.raises(ReservationExists, match="already in use"):
        bl.check(ALICE, Usage(input_tokens=1), reservation_id="req-1")
    assert team_held(raw_redis) == (100 if sweep else 900)  # the reused id changed nothing


def test_the_default_sampler_sweeps_one_check_in_eight_over_ids_and_clock(make_limiter, clock):
    """Without the hook the sample comes from the id's last character and the clock: each of
    the 16 hex digits a random id ends in sweeps at exactly one clock residue mod 8, so over
    all 16 x 8 pairs exactly 16 checks sweep (one in eight). Read from the planned arguments
    (ARGV[4] >= 4), with ids chosen to end in each digit."""
    bl = make_limiter(BASIC)
    core = bl.engine.planners.core
    swept = [(digit, step) for digit in "0123456789abcdef" for step in range(8)
             if core.plan_check(ALICE, Usage(input_tokens=1), clock() + step,
                                reservation_id=f"id-{digit}").args[3] >= 4]
    assert len(swept) == 16
    assert sorted({d for d, _ in swept}) == list("0123456789abcdef")
