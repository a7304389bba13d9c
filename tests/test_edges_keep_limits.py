"""Leases, the deny cache and settling keep the limits and tell the truth (regressions of the
engine issue: each test failed before the engine took over these paths)."""

from __future__ import annotations

import time

import pytest

from budgetlimiter import (
    BudgetLimiter,
    LeaseConfig,
    ReservationExists,
    ReservationNotFound,
    ReservationSettled,
    Subject,
    Usage,
    parse_policy,
)

from .policies import BASIC

TEAM_OF_TEN = """
reservation_ttl_seconds: 1
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {teams: {eng: {limits: [{metric: invocations, amount: 10, period: day}]}}}}
"""
ONE_A_DAY = """
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {teams: {eng: {limits: [{metric: invocations, amount: 1, period: day}]}}}}
"""
ALICE = Subject("acme", "m", team="eng", user="alice")
BOB = Subject("acme", "m", team="eng", user="bob")
GPT_ALICE = Subject("acme", "gpt", team="eng", user="alice")
U = Usage(100, 100)


def team_used(bl: BudgetLimiter) -> int:
    used = bl.scope_status("org:acme/team:eng")[0].used
    assert used is not None
    return used


def test_a_lease_retired_with_a_call_in_flight_never_lets_a_hard_limit_overshoot(backend_url):
    """Redis keeps a retired lease's spent and in-flight part until the lease is handed back
    (the hand-back comes up to a timer period after the lease stops accepting commits)."""
    pol = parse_policy(TEAM_OF_TEN)
    a = BudgetLimiter(pol, backend_url, timeout=2.0, leases=LeaseConfig(calls=4, seconds=300))
    b = BudgetLimiter(pol, backend_url, timeout=2.0)
    try:
        d1, _d2 = a.check(ALICE, U), a.check(ALICE, U)  # d2 is never settled
        a.commit(d1.reservation, U)
        time.sleep(0.5)
        a.release(a.check(ALICE, Usage(100, 100, invocations=3)).reservation)  # retires it
        deadline = time.monotonic() + 15
        while b.scope_status("org:acme/team:eng")[0].reserved:
            assert time.monotonic() < deadline, "the lease was never handed back"
            time.sleep(0.01)
        admitted = 0
        for _ in range(10):
            d = b.check(BOB, U)
            if d.allowed:
                admitted += 1
                b.commit(d.reservation, U)
        a.close()
        assert admitted == 9  # alice's committed call is counted, once
        assert team_used(b) == 10
    finally:
        a.close()
        b.close()


def test_a_cached_refusal_speaks_about_the_subject_that_asked(make_limiter):
    lim = make_limiter(ONE_A_DAY)
    d = lim.check(ALICE, Usage(10, 10))
    lim.commit(d.reservation, Usage(10, 10))
    assert not lim.check(ALICE, Usage(10, 10)).allowed  # fills the deny cache
    d = lim.check(BOB, Usage(10, 10))
    assert d.cached and not d.allowed
    assert d.subject == BOB
    assert d.limits == (d.blocked_by,)  # only the shared, exhausted budget: not alice's
    assert d.blocked_by is not None and str(d.blocked_by.scope) == "org:acme/team:eng"
    assert "bob" in str(d) and "alice" not in str(d)
    assert d.to_dict()["subject"] == str(BOB)


def test_commit_after_release_is_refused_never_a_silent_duplicate(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(GPT_ALICE, Usage(input_tokens=100))
    assert bl.release(d.reservation).status == "released"
    with pytest.raises(ReservationSettled, match="released") as info:
        bl.commit(d.reservation, Usage(input_tokens=80))
    assert info.value.settled_as == "released"
    d = bl.check(GPT_ALICE, Usage(input_tokens=100))
    assert bl.commit(d.reservation, Usage(input_tokens=80)).status == "committed"
    with pytest.raises(ReservationSettled, match="committed"):
        bl.release(d.reservation)
    assert bl.commit(d.reservation, Usage(input_tokens=80)).status == "duplicate"
    assert team_used(bl) == 80


def test_commit_by_id_after_redis_lost_the_reservation_counts_the_usage_once(make_limiter,
                                                                           raw_redis):
    bl = make_limiter(BASIC)
    d = bl.check(GPT_ALICE, Usage(input_tokens=100))
    raw_redis.flushall()  # Redis lost its data (restart without persistence, failover)
    with pytest.raises(ReservationNotFound):  # without the subject nothing can be counted
        bl.commit_by_id("acme", d.reservation.id, Usage(input_tokens=80, cost="0.00008"))
    r = bl.commit_by_id("acme", d.reservation.id, Usage(input_tokens=80), subject=GPT_ALICE)
    assert r.status == "recorded" and r.cost_usd is not None
    again = bl.commit_by_id("acme", d.reservation.id, Usage(input_tokens=80), subject=GPT_ALICE)
    assert again.status == "duplicate"
    assert team_used(bl) == 80


def test_commit_by_id_of_a_live_reservation_is_a_plain_commit(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(GPT_ALICE, Usage(input_tokens=100))
    r = bl.commit_by_id("acme", d.reservation.id, Usage(input_tokens=70), subject=GPT_ALICE)
    assert r.status == "committed"
    status = bl.scope_status("org:acme/team:eng")[0]
    assert (status.used, status.reserved) == (70, 0)


def test_a_second_check_under_a_reservation_id_in_use_is_refused_and_changes_nothing(
        make_limiter):
    """Reserving twice under one id used to overwrite the first reservation: its estimate was
    held for good (the second one's was refunded or committed in its place)."""
    bl = make_limiter(BASIC)
    d = bl.check(GPT_ALICE, Usage(input_tokens=100), reservation_id="req-7")
    assert d.allowed
    with pytest.raises(ReservationExists, match="req-7"):
        bl.check(GPT_ALICE, Usage(input_tokens=200), reservation_id="req-7")
    team = bl.scope_status("org:acme/team:eng")[0]
    assert team.reserved == 100
    bl.release(d.reservation)
    with pytest.raises(ReservationExists):  # settled ids stay in use (idempotency window)
        bl.check(GPT_ALICE, Usage(input_tokens=100), reservation_id="req-7")
    team = bl.scope_status("org:acme/team:eng")[0]
    assert (team.used, team.reserved) == (0, 0)
