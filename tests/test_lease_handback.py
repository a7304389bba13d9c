"""How leases go back to Redis: the shrink op of settle.lua on every marker state and in
either order with the final return, what a retired lease keeps reserved, failed and retried
hand-backs, the timer thread vs. close(), policy reloads during a take, the memory of returned
leases; and the sampled expiry sweep of check.lua that hand-backs and crashed callers rely on.

The tests after the first section were bugs, kept as regression tests.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

import pytest

from budgetlimiter import (
    AsyncBudgetLimiter,
    LeaseConfig,
    Subject,
    Usage,
    parse_policy,
)
from budgetlimiter.engine import lease_ops
from budgetlimiter.usage import Amounts
from tests.faults import scripts_only

from .faults import await_probe
from .lease_helpers import ONE, ORG, ZERO, cost, inv, with_amount
from .policies import LEASES, ROLLOVER

# a tight cost budget: 45 micro-USD a month (4 calls of ONE fit, a 5th does not)
TIGHT_COST = LEASES.replace('amount: "10"', 'amount: "0.000045"')


def work(bl, **how):
    """The lease hand-backs due now, as the engine plans them."""
    return lease_ops.work(bl.leases, bl.engine.planners.settle, bl.clock(), **how)


def shrink(bl, *args):
    return bl.engine.planners.settle.plan_shrink(*args)


def _open_lease_with_in_flight(bl):
    """A lease of 4 (calls=4): one call committed (1 invocation, 10 micro-USD), one in flight,
    then retired (past its time) so that a shrink to 2 invocations / 20 micro-USD is due."""
    done = bl.check(ORG, ONE)
    bl.commit(done.reservation, ONE)
    flying = bl.check(ORG, ONE)
    assert done.leased and flying.leased
    return flying


# ---------------------------------------------------------------------------------------
# what holds
# ---------------------------------------------------------------------------------------

@pytest.mark.sync_only("plans shrink ops by hand (core.plan_shrink, _settle)")
def test_shrink_op_on_every_marker_state(make_limiter, clock):
    """R: refunds down to keep (never above what was reserved) and moves the expiry;
    X: 'late', nothing changes; D: 'duplicate'; missing: ReservationNotFound (swallowed by the
    lease hand-back)."""
    from budgetlimiter.errors import ReservationNotFound

    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=60))
    plain = make_limiter(LEASES)
    d = bl.check(ORG, ONE)
    lease = bl.leases._unsettled[d.reservation.lease]
    now = clock()
    # R: keep more than reserved in one metric: capped at the reservation
    keep = Amounts(invocations=2, input_tokens=0, output_tokens=0, total_tokens=0, cost=500)
    res = bl.execute(shrink(bl, lease.reservation, keep, now + 90_000, now))
    assert res.status == "released"
    assert (inv(plain.status(ORG)).reserved, cost(plain.status(ORG)).reserved) == (2, 40)
    # shrink twice (a retried shrink) is harmless: it only ever lowers
    bl.execute(shrink(bl, lease.reservation, keep, now + 90_000, now))
    assert (inv(plain.status(ORG)).reserved, cost(plain.status(ORG)).reserved) == (2, 40)
    # the moved expiry holds past the lease's own TTL (60 + 30 s) and ends at the new one
    clock.advance(80)
    assert inv(plain.status(ORG)).reserved == 2
    clock.advance(20)
    assert inv(plain.status(ORG)).reserved == 0
    # X: expired and swept
    res = bl.execute(shrink(bl, lease.reservation, keep, clock() + 1000, clock()))
    assert res.status == "late"
    assert inv(plain.status(ORG)).reserved == 0
    # D: settled
    d2 = plain.check(ORG, ONE)
    plain.release(d2.reservation)
    res = bl.execute(shrink(bl, d2.reservation, keep, clock() + 1000, clock()))
    assert res.status == "duplicate"
    assert inv(plain.status(ORG)).reserved == 0
    # missing
    ghost = d2.reservation.__class__(id="f" * 32, subject=ORG, estimate=d2.reservation.estimate,
                                     created_ms=clock(), expires_ms=clock())
    with pytest.raises(ReservationNotFound):
        bl.execute(shrink(bl, ghost, keep, clock() + 1000, clock()))
    bl.leases._unsettled.clear()  # handled by hand above


@pytest.mark.parametrize("order", ["shrink_first", "return_first"])
@pytest.mark.sync_only("orders the hand-back calls by hand (lease_ops.work, execute)")
def test_shrink_and_final_return_in_either_order(make_limiter, clock, order):
    """The shrink and the final commit may reach Redis in either order (two threads, or two
    connections in asyncio): usage is counted once and nothing stays reserved."""
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=1))
    plain = make_limiter(LEASES)
    flying = _open_lease_with_in_flight(bl)
    clock.advance(1.5)
    shrinks = work(bl, scan=True)  # retire: a shrink (1 spent + 1 in flight)
    assert [w.shrink is None for w in shrinks] == [False]
    bl.leases.settle(flying.reservation, bl.engine.planners.core.amounts(ORG, ONE))
    returns = work(bl, scan=True)
    assert [w.shrink is None for w in returns] == [True]
    calls = [shrinks[0].call, returns[0].call]
    if order == "return_first":
        calls.reverse()
    for call in calls:
        bl.execute(call)
    status = inv(plain.status(ORG))
    assert (status.used, status.reserved) == (2, 0)
    assert (cost(plain.status(ORG)).used, cost(plain.status(ORG)).reserved) == (20, 0)


def hand_back_due_leases(bl):
    """Any call hands due leases back first; a check with an explicit ttl is never leased and
    waits for the hand-backs on either client. Its own reservation is released at once."""
    probe = bl.check(Subject("acme", "gpt", user="probe"), ZERO, ttl=5)
    if probe.reservation is not None:
        bl.release(probe.reservation)


def test_retired_lease_holds_spent_and_in_flight_after_its_ttl(make_limiter, clock):
    """After the shrink the lease's reservation lives until hold_until (reservation_ttl), not
    until its own seconds + grace: another process cannot admit into it meanwhile."""
    a = make_limiter(with_amount(4), leases=LeaseConfig(calls=4, seconds=1, grace=1))
    flying = _open_lease_with_in_flight(a)
    clock.advance(1.5)
    hand_back_due_leases(a)  # shrink to 2
    clock.advance(5)  # past the lease's own TTL (2 s)
    b = make_limiter(with_amount(4))
    assert sum(b.check(ORG, ONE).allowed for _ in range(4)) == 2
    a.commit(flying.reservation, ONE)  # the last call in flight: the lease goes back
    hand_back_due_leases(a)  # (asyncio sends it from a task: wait for it)
    status = inv(b.status(ORG))
    assert (status.used, status.reserved) == (2, 2)


def test_expired_reservations_never_refuse_whatever_the_sample(make_limiter, clock):
    """The sweep is sampled on ~1/8 checks; a refusal always sweeps first. Both paths,
    forced: the sampled sweep refunds on the fast path, without it the full path does."""
    bl = make_limiter(with_amount(5))
    for round_ in range(4):
        sampled = round_ % 2 == 0
        bl.engine.sweep_sampler = lambda sampled=sampled: sampled
        held = [bl.check(ORG, ONE, ttl=1) for _ in range(5)]
        assert all(d.allowed for d in held)
        clock.advance(1.001)
        d = bl.check(ORG, ONE)
        assert d.allowed, sampled
        bl.release(d.reservation)
        assert inv(bl.status(ORG)).reserved == 0


def test_timer_thread_and_user_threads_share_hand_backs(make_limiter, clock):
    """The timer thread and user threads call due() concurrently: every lease goes back
    once, nothing is counted twice."""
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=3, seconds=0.02))
    stop = threading.Event()
    admitted = [0]
    lock = threading.Lock()

    def user():
        while not stop.is_set():
            d = bl.check(ORG, ONE)
            if d.allowed:
                with lock:
                    admitted[0] += 1
                bl.commit(d.reservation, ONE)
            clock.advance(0.007)

    threads = [threading.Thread(target=user) for _ in range(3)]
    for t in threads:
        t.start()
    threading.Event().wait(0.4)
    stop.set()
    for t in threads:
        t.join(5)
    bl.close()
    status = inv(make_limiter(LEASES).status(ORG))
    assert status.reserved == 0
    assert status.used == admitted[0]


# ---------------------------------------------------------------------------------------
# bugs
# ---------------------------------------------------------------------------------------

def test_lease_retired_for_a_zero_metric_is_returned_before_the_redis_check(make_limiter):
    bl = make_limiter(TIGHT_COST, leases=LeaseConfig(calls=4, seconds=60))
    for _ in range(4):  # the slice's 4 invocations are used; its 40 micro-USD are not
        d = bl.check(ORG, ONE)
        assert d.leased
        bl.commit(d.reservation, Usage(input_tokens=0))
    # truth: 4 invocations of 25 and 0 micro-USD of 45 used; 10 micro-USD fit
    d = bl.check(ORG, Usage(invocations=0, input_tokens=10))
    assert d.allowed


def test_slice_check_waits_for_the_lease_it_replaces(make_limiter):
    bl = make_limiter(with_amount(15), leases=LeaseConfig(calls=10, seconds=60))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, Usage(input_tokens=100))  # cost part of slice spent
    # 1 used; a new slice of 10 fits 15 once the old one (10 reserved) is back
    d2 = bl.check(ORG, ONE)
    assert (d2.allowed, d2.leased, bl.leases.refused) == (True, True, 0)


def test_async_per_call_check_after_a_retire_is_not_under_granted(backend_url, clock):
    async def main():
        bl = AsyncBudgetLimiter(parse_policy(with_amount(14)), backend_url, clock=clock,
                                timeout=2, leases=LeaseConfig(calls=10, seconds=60))
        for _ in range(6):
            d = await bl.check(ORG, ONE)
            await bl.commit(d.reservation, ONE)
        real = type(bl)._execute.__get__(bl)

        async def slow_settles(call):  # hand-backs ride a slower connection
            if call.script == "settle":
                await asyncio.sleep(0.05)
            return await real(call)

        bl._execute = scripts_only(bl, slow_settles)
        # 6 used + 5 = 11 <= 14 (the sync client admits it: see test_lease_edges.py)
        big = await bl.check(ORG, Usage(input_tokens=10, invocations=5))
        bl._execute = scripts_only(bl, real)
        await bl.aclose()
        return big.allowed

    assert asyncio.run(asyncio.wait_for(main(), 5)) is True


def test_expired_backlog_over_1000_never_refuses(make_limiter, clock):
    bl = make_limiter(LEASES)
    noise = bl.check_batch([(ORG, Usage(invocations=0))] * 1000, ttl=1)  # crashed callers
    assert all(d.allowed for d in noise)
    full = bl.check_batch([(ORG, ONE)] * 25, ttl=2)
    assert all(d.allowed for d in full)
    clock.advance(5)  # every reservation expired
    d = bl.check(ORG, ONE)
    assert d.allowed


def test_status_read_exact_with_expired_backlog_over_1000(make_limiter, clock):
    bl = make_limiter(LEASES)
    bl.check_batch([(ORG, Usage(invocations=0))] * 1000, ttl=1)
    bl.check_batch([(ORG, ONE)] * 25, ttl=2)
    clock.advance(5)
    assert inv(bl.status(ORG)).reserved == 0


def test_expired_backlog_over_1000_never_shrinks_a_carry(make_limiter, clock):
    bl = make_limiter(ROLLOVER)
    clock.set(datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    bl.check_batch([(ORG, Usage(invocations=0))] * 1000, ttl=1)
    assert all(d.allowed for d in bl.check_batch([(ORG, Usage())] * 10, ttl=2))
    clock.set(datetime(2026, 3, 11, 12, tzinfo=timezone.utc))  # all 1010 expired, unsettled
    admitted = 0
    for _ in range(20):
        d = bl.check(ORG, Usage())
        if d.allowed:
            admitted += 1
            bl.commit(d.reservation, Usage())
    assert admitted == 15  # 10 + carry capped at 5 (nothing was used on March 10)


def test_reload_to_strict_during_lease_take_never_leases(make_limiter):
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=60))
    strict = parse_policy(LEASES.replace("timezone: UTC", "timezone: UTC\nstrict: true"))
    real_take = bl.leases.take
    fired = [False]

    def take_with_reload(*args, **kwargs):
        if not fired[0]:
            fired[0] = True
            bl.set_policy(strict)  # a config-reload thread, right now
        return real_take(*args, **kwargs)

    bl.leases.take = take_with_reload
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, Usage(input_tokens=500))
    bl.return_leases()
    # strict: the estimate is a cap (10 micro-USD), as test_lease_edges.py checks
    assert not d.leased
    assert cost(make_limiter(LEASES).status(ORG)).used == 10


@pytest.mark.sync_only("the sync client's timer thread (_execute, _timer)")
def test_close_waits_for_the_timer_threads_hand_back(make_limiter, clock):
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=0.1))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    real = type(bl)._execute.__get__(bl)
    entered, gate = threading.Event(), threading.Event()

    def held_in_timer(call):
        if threading.current_thread().name == "budgetlimiter-timer":
            entered.set()
            gate.wait(5)
        return real(call)

    bl._execute = scripts_only(bl, held_in_timer)
    clock.advance(1)  # the lease is due: the timer takes it on its next tick
    assert entered.wait(5)
    closer = threading.Thread(target=bl.close)
    closer.start()
    closer.join(0.5)
    closed_first = not closer.is_alive()
    used = inv(make_limiter(LEASES).status(ORG)).used
    gate.set()
    closer.join(5)
    bl._timer.join(5)
    assert not closer.is_alive()
    # close() never returns before the usage is in Redis (had it returned while the timer
    # was held, it handed the lease back itself) ...
    assert not closed_first or used == 1
    # ... and whichever sent it, it is counted once
    assert inv(make_limiter(LEASES).status(ORG)).used == 1


@pytest.mark.redis
def test_failed_shrink_is_retried(make_flaky_limiter, flaky_redis, clock):
    a = make_flaky_limiter(with_amount(4), leases=LeaseConfig(calls=4, seconds=1, grace=1),
                           timeout=0.2)
    flying = _open_lease_with_in_flight(a)
    clock.advance(1.5)
    flaky_redis.down()
    hand_back_due_leases(a)  # the shrink fails
    flaky_redis.up()
    await_probe(a)
    clock.advance(0.2)
    hand_back_due_leases(a)  # Redis is back: this hand-back retries it
    clock.advance(5)  # past the lease's own TTL (2 s), well within hold (60 s)
    b = make_flaky_limiter(with_amount(4), url=flaky_redis.target_url)
    admitted = sum(b.check(ORG, ONE).allowed for _ in range(4))
    a.commit(flying.reservation, ONE)
    assert admitted == 2  # 1 spent + 1 in flight under a's lease
    assert inv(b.status(ORG)).used <= 4


def test_retried_commit_is_not_double_counted_after_many_returns(make_limiter, monkeypatch):
    import budgetlimiter.engine.leases as leases_mod

    monkeypatch.setattr(leases_mod, "_MAX_REMEMBERED", 3)  # stands for 100 000 busy leases
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    bl.return_leases()
    for i in range(5):  # other subjects' leases come and go
        x = bl.check(Subject("acme", "gpt", user=f"u{i}"), ONE)
        bl.release(x.reservation)
        bl.return_leases()
    again = bl.commit(d.reservation, ONE)  # a retry, well within the idempotency window
    assert inv(make_limiter(LEASES).status(ORG)).used == 1
    assert again.status == "duplicate"
