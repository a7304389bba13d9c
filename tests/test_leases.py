"""Optional leases on every backend and both clients: a slice of budget reserved in Redis and
spent in-process, with exact admission (a slice counts as reserved while held) and the usage
sent back once."""

from __future__ import annotations

import asyncio

import pytest

from budgetlimiter import AsyncBudgetLimiter, LeaseConfig, Usage, parse_policy

from .lease_helpers import ONE, ORG, inv
from .policies import LEASES, RATES

POLICY = LEASES




def test_a_lease_admits_locally_and_counts_as_reserved_in_redis(make_limiter, clock):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=1))
    first = bl.check(ORG, ONE)
    # the first check opens the lease (one round trip) and is admitted from it
    assert first.allowed and first.leased
    assert first.reservation is not None and first.reservation.lease
    assert inv(first.limits).taken == 10  # the limits as Redis saw them with the slice
    seen = [bl.check(ORG, ONE) for _ in range(9)]
    assert all(d.allowed and d.leased for d in seen)
    # Redis holds the whole slice (10 invocations, 100 micro-USD) as reserved
    plain = make_limiter(POLICY)
    status = inv(plain.status(ORG))
    assert (status.used, status.reserved) == (0, 10)
    for d in [first, *seen]:
        assert bl.commit(d.reservation, Usage(input_tokens=5)).status == "committed"
    assert bl.leases.local_admits == 10 and bl.leases.opened == 1
    clock.advance(1.5)  # the lease is past its time: the next check returns it first
    bl.check(ORG, ONE)
    status = inv(plain.status(ORG))
    assert (status.used, status.reserved) == (10, 10)  # 10 used, a new slice of 10
    cost = next(s for s in plain.status(ORG) if s.metric.value == "cost")
    assert cost.used == 50


def test_admission_stays_exact_across_processes(make_limiter):
    a = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=60))
    b = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=60))
    admitted = 0
    for _ in range(40):
        for bl in (a, b):
            d = bl.check(ORG, ONE)
            if d.allowed:
                admitted += 1
                bl.commit(d.reservation, ONE)
    assert admitted == 25  # exactly the budget: slices near the edge fall back to per-call
    a.close()
    b.close()
    status = inv(make_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (25, 0)


def test_close_returns_leases_and_release_refunds_locally(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=8, seconds=60))
    kept = [bl.check(ORG, ONE) for _ in range(3)]
    assert bl.release(kept[1].reservation).status == "released"
    assert bl.release(kept[1].reservation).status == "duplicate"
    bl.commit(kept[0].reservation, Usage(input_tokens=10, invocations=1))
    bl.commit(kept[2].reservation, Usage(input_tokens=30, invocations=1))
    bl.close()
    status = make_limiter(POLICY).status(ORG)
    assert (inv(status).used, inv(status).reserved) == (2, 0)
    assert next(s for s in status if s.metric.value == "cost").used == 40


def test_commit_after_the_lease_went_back_is_recorded_once(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    bl.return_leases()  # the lease goes back with this reservation still open
    late = bl.commit(d.reservation, ONE)
    again = bl.commit(d.reservation, ONE)
    assert (late.status, again.status) == ("recorded", "duplicate")
    status = inv(make_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (1, 0)


def test_overshoot_is_reported_and_counted(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    r = bl.commit(d.reservation, Usage(input_tokens=500))
    assert r.overshoot and r.actual is not None and r.actual.cost == 500
    bl.return_leases()
    cost = next(s for s in make_limiter(POLICY).status(ORG) if s.metric.value == "cost")
    assert (cost.used, cost.reserved) == (500, 0)


def test_a_dead_process_holds_its_slice_only_until_the_reservation_expires(make_limiter, clock):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=20, seconds=1, grace=5))
    assert bl.check(ORG, ONE).allowed
    plain = make_limiter(POLICY)
    assert inv(plain.status(ORG)).reserved == 20
    bl.engine.leases = None  # the process "dies": nothing is ever returned
    clock.advance(7)
    assert inv(plain.status(ORG)).reserved == 0


def test_rate_limits_are_decided_per_call(make_limiter):
    """Subjects with rate limits are never leased (a slice would spend the rate limit at
    once, and Redis never refunds a rate limit): every check goes to Redis."""
    bl = make_limiter(RATES, leases=LeaseConfig(calls=10, seconds=1))
    decisions = [bl.check(ORG, Usage(input_tokens=1)) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert not any(d.leased for d in decisions)
    assert bl.leases.opened == 0 and bl.leases.refused == 0


def test_explicit_ids_and_ttls_bypass_leases(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=60))
    d = bl.check(ORG, ONE, reservation_id="req-1")
    assert d.allowed and not d.leased and not d.reservation.lease
    assert inv(d.limits).taken == 1


def test_policy_change_retires_leases(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=60))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    bl.set_policy(parse_policy(POLICY.replace("amount: 25", "amount: 3")))
    d2 = bl.check(ORG, ONE)  # the old lease goes back; a slice of 10 no longer fits 3
    assert d2.allowed and not d2.leased
    status = inv(make_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (1, 1)


@pytest.mark.parametrize("bad", [
    {"calls": 1}, {"calls": 2.5}, {"seconds": 0}, {"seconds": float("nan")}, {"grace": -1},
    {"seconds": 10_000},
])
def test_bad_lease_config_is_refused(bad):
    with pytest.raises(ValueError, match="lease"):
        LeaseConfig(**bad)


def test_async_tasks_share_one_lease(backend_url, clock):
    async def main():
        bl = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2,
                                leases=LeaseConfig(calls=16, seconds=60))
        decisions = await asyncio.gather(*(bl.check(ORG, ONE) for _ in range(40)))
        assert sum(d.allowed for d in decisions) == 25
        assert bl.leases.opened == 1  # 64 tasks did not each open a lease
        for d in decisions:
            if d.allowed:
                await bl.commit(d.reservation, ONE)
        await bl.aclose()
        plain = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2)
        status = inv(await plain.status(ORG))
        await plain.aclose()
        return status

    status = asyncio.run(main())
    assert (status.used, status.reserved) == (25, 0)
