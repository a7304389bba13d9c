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
