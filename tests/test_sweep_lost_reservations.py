"""The expiry sweep (lib.lua) when Redis no longer has a reservation's key but its id is still
in the org's expiry set: the key was evicted or deleted (maxmemory, an operator), or outlived
by the set when no script of the org ran for its whole key TTL."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def test_a_sweep_drops_the_id_of_a_reservation_whose_key_is_gone_and_refunds_nothing(
        make_limiter, clock, raw_redis):
    """800 micro-USD reserved of the team's 1000 a day, then the reservation key is deleted
    and its expiry passes: the status read's full sweep has no plan to refund from, so it
    takes the id out of the set and leaves the 800 held (nothing says what it reserved)."""
    bl = make_limiter(BASIC)
    bl.engine.sweep_sampler = lambda: False
    d = bl.check(ALICE, Usage(input_tokens=800), ttl=30)
    rkey = bl.engine.planners.settle.core.keys.reservation("acme", d.reservation.id)
    assert raw_redis.delete(rkey) == 1
    clock.advance(31)
    team = next(s for s in bl.status(ALICE) if s.scope.team == "eng" and s.scope.user is None)
    assert (team.used, team.reserved) == (0, 800)
    assert list(raw_redis.scan_iter("*:rx")) == []  # the set held that one id only


def test_the_sampled_sweep_is_picked_by_the_id_s_last_character_and_the_clock(
        make_limiter, clock, raw_redis):
    """Without a test hook, a check runs the sampled sweep when (last character of its
    reservation id + now in ms) is a multiple of 8 (planner.py, about one check in eight):
    '1' is 49, so at a time of 7 modulo 8 a check under an id ending in '1' sweeps and one
    ending in '0' (48: 55) does not. An 800 micro-USD reservation of the team's 1000 has
    expired: a check of 100 that sweeps leaves 100 held, one that does not 900."""
    bl = make_limiter(BASIC)
    assert bl.engine.sweep_sampler is None
    held_key = "*:c:o/t=eng:day:*"

    def team_held() -> int:
        (key,) = raw_redis.scan_iter(held_key)
        return int(raw_redis.hget(key, "h:c"))

    def at_7_mod_8() -> None:
        clock.now_ms += (7 - clock.now_ms) % 8

    clock.now_ms -= clock.now_ms % 8  # 0 modulo 8: the expiring check below sweeps nothing
    bl.check(ALICE, Usage(input_tokens=800), ttl=30, reservation_id="a00")
    clock.advance(31)
    at_7_mod_8()
    assert bl.check(ALICE, Usage(input_tokens=100), reservation_id="b10").allowed
    assert team_held() == 900  # not swept: (48 + 7) % 8 = 7
    assert bl.check(ALICE, Usage(input_tokens=100), reservation_id="c01").allowed
    assert team_held() == 200  # swept: (49 + 7) % 8 = 0; the 800 refunded, 100 + 100 held
