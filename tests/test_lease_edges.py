"""Leases at their edges (budgetlimiter/engine/leases.py and its wiring in both clients):
threads, tasks, cancellation, outages, data loss, policy changes, period ends, strict mode,
zero estimates, rate limits, duplicates and memory bounds. The tests in the second half were
bugs, kept as regression tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import pytest

from budgetlimiter import (
    AsyncBudgetLimiter,
    BudgetLimiter,
    LeaseConfig,
    ReservationSettled,
    Subject,
    Usage,
    parse_policy,
)

from .faults import await_probe, hand_back_all, scripts_only
from .lease_helpers import ONE, ORG, ZERO, cost, inv, with_amount
from .policies import LEASES, RATE_ONLY

POLICY = LEASES








# ---------------------------------------------------------------------------------------
# behaviour that holds
# ---------------------------------------------------------------------------------------

def test_many_threads_two_processes_never_over_admit_and_lose_nothing(make_limiter):
    """8 threads over two leased clients of one backend: never more than the budget, every
    committed unit counted once, nothing left reserved after close()."""
    a = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    b = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    admitted = [0]
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work(bl: BudgetLimiter) -> None:
        start.wait()
        for _ in range(15):
            d = bl.check(ORG, ONE)
            if d.allowed:
                with lock:
                    admitted[0] += 1
                bl.commit(d.reservation, ONE)

    threads = [threading.Thread(target=work, args=(bl,)) for bl in (a, b) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert admitted[0] <= 25
    a.close()
    b.close()
    plain = make_limiter(POLICY)
    status = inv(plain.status(ORG))
    assert (status.used, status.reserved) == (admitted[0], 0)
    # whatever was not admitted is still there: nothing is stuck or lost
    rest = sum(plain.check(ORG, ONE).allowed for _ in range(30))
    assert admitted[0] + rest == 25


def test_retried_commit_while_the_lease_is_open_is_a_duplicate(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    assert bl.commit(d.reservation, ONE).status == "committed"
    assert bl.commit(d.reservation, ONE).status == "duplicate"
    with pytest.raises(ReservationSettled, match="was committed"):  # not a silent duplicate
        bl.release(d.reservation)
    bl.return_leases()
    status = inv(make_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (1, 0)


def test_overshoot_reduces_what_the_lease_admits(make_limiter):
    """A local overshoot is taken from the slice: the lease never admits past its slice."""
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, Usage(input_tokens=35))  # 25 micro-USD over its estimate
    # 40 - 35 = 5 micro-USD left: a request of 10 no longer fits the slice; the lease is
    # retired (and, with nothing outstanding, returned) and a new one opens
    nxt = bl.check(ORG, ONE)
    assert nxt.allowed and nxt.leased and nxt.reservation.lease != d.reservation.lease
    assert bl.leases.opened == 2 and bl.leases.returned == 1
    plain = make_limiter(POLICY)
    assert (cost(plain.status(ORG)).used, cost(plain.status(ORG)).reserved) == (35, 40)
    bl.commit(nxt.reservation, ONE)
    bl.close()
    status = plain.status(ORG)
    assert (cost(status).used, cost(status).reserved) == (45, 0)


def test_lease_returned_after_its_redis_reservation_expired_is_counted_late(
        make_limiter, clock):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=1, grace=1))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    clock.advance(10)
    plain = make_limiter(POLICY)
    assert inv(plain.status(ORG)).reserved == 0  # Redis refunded the whole slice
    bl.return_leases()  # the hand-back finds its reservation expired: counted late, once
    status = inv(plain.status(ORG))
    assert (status.used, status.reserved) == (1, 0)
    bl.return_leases()
    assert inv(plain.status(ORG)).used == 1


#: the flaky clients' socket timeout: a lost reply costs this long (and redis-py's retries)
FLAKY_TIMEOUT = 0.2


@pytest.mark.redis
def test_lease_hand_back_during_an_outage_is_replayed_once(make_flaky_limiter, flaky_redis):
    """A lease goes back while Redis is away: x's commit reaches Redis but its reply is lost
    (an ambiguous failure), y's never leaves. Both are kept in-process and replayed when Redis
    answers: x is a duplicate there (counted once), y is counted then."""
    bl = make_flaky_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60),
                            timeout=FLAKY_TIMEOUT)
    observer = make_flaky_limiter(POLICY, url=flaky_redis.target_url)
    x, y = Subject("acme", "gpt", user="x"), Subject("acme", "gpt", user="y")

    def spend_one_leased(s):
        d = bl.check(s, ONE)
        assert d.leased
        bl.commit(d.reservation, ONE)

    spend_one_leased(x)
    flaky_redis.lose_replies()
    bl.return_leases()  # applied in Redis, no reply
    flaky_redis.up()
    assert (inv(observer.status(ORG)).used, inv(observer.status(ORG)).reserved) == (1, 0)
    await_probe(bl)
    spend_one_leased(y)  # the lease's check is an answer from Redis: x is replayed now
    flaky_redis.down()
    bl.return_leases()  # y's hand-back cannot go out
    assert inv(observer.status(ORG)).used == 1
    flaky_redis.up()
    await_probe(bl)
    hand_back_all(bl)  # Redis answers: what was kept in-process is replayed
    assert bl.return_leases() == 0  # and only once
    status = inv(observer.status(ORG))
    assert (status.used, status.reserved) == (2, 0)
    assert bl.record(x, ONE, request_id="after").status == "recorded"  # the client is well


@pytest.mark.redis
def test_unused_lease_returned_during_an_outage_is_refunded_by_its_ttl(
        make_flaky_limiter, flaky_redis, clock):
    bl = make_flaky_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=1, grace=2),
                            timeout=FLAKY_TIMEOUT)
    d = bl.check(ORG, ONE)
    bl.release(d.reservation)
    flaky_redis.down()
    bl.return_leases()  # the release cannot go out
    flaky_redis.up()
    await_probe(bl)
    assert bl.return_leases() == 0  # nothing was used: nothing to replay
    clock.advance(5)
    status = inv(make_flaky_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (0, 0)


@pytest.mark.redis
def test_outage_open_lease_keeps_admitting_from_its_slice_then_policy_decides(
        make_flaky_limiter, flaky_redis):
    """fail_closed: a held slice is still spent (it is reserved in Redis), but no lease opens
    during the outage: the outage policy decides as without leases."""
    bl = make_flaky_limiter(POLICY, leases=LeaseConfig(calls=2, seconds=60),
                            timeout=FLAKY_TIMEOUT)
    d = bl.check(ORG, ONE)
    flaky_redis.down()
    d2 = bl.check(ORG, ONE)
    assert d2.allowed and d2.leased
    d3 = bl.check(ORG, ONE)  # the slice is spent: Redis is needed
    assert not d3.allowed and d3.degraded and not d3.leased
    bl.commit(d.reservation, ONE)
    bl.commit(d2.reservation, ONE)
    flaky_redis.up()
    await_probe(bl)
    hand_back_all(bl)
    status = inv(make_flaky_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (2, 0)


def test_refused_slice_falls_back_to_exact_per_call_checks_and_deny_cache(make_limiter):
    bl = make_limiter(with_amount(3), leases=LeaseConfig(calls=10, seconds=60))
    ds = [bl.check(ORG, ONE) for _ in range(5)]
    assert [d.allowed for d in ds] == [True, True, True, False, False]
    assert not any(d.leased for d in ds)
    for d in ds[:3]:
        bl.commit(d.reservation, ONE)
    d = bl.check(ORG, ONE)  # exhausted by committed usage: Redis says so, the cache learns
    assert not d.allowed and not d.cached
    d = bl.check(ORG, ONE)
    assert not d.allowed and d.cached


def test_async_opening_check_that_raises_does_not_strand_waiters(backend_url, clock):
    async def main():
        bl = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2,
                                leases=LeaseConfig(calls=8, seconds=60))
        real = type(bl)._execute.__get__(bl)
        calls = [0]

        async def first_fails(call):
            calls[0] += 1
            if calls[0] == 1:
                await asyncio.sleep(0.01)
                raise RuntimeError("boom")
            return await real(call)

        bl._execute = scripts_only(bl, first_fails)
        results = await asyncio.gather(*(bl.check(ORG, ONE) for _ in range(5)),
                                       return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert all(r.allowed for r in results[1:])  # waiters went on (per call)
        assert not bl._exclusive
        d = await bl.check(ORG, ONE)  # a later check opens a lease normally
        assert d.allowed
        await bl.aclose()

    asyncio.run(asyncio.wait_for(main(), 5))


def test_async_cancelled_opener_does_not_strand_waiters(backend_url, clock):
    async def main():
        bl = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2,
                                leases=LeaseConfig(calls=8, seconds=60))
        real = type(bl)._execute.__get__(bl)
        gate = asyncio.Event()

        async def slow(call):
            await gate.wait()
            return await real(call)

        bl._execute = scripts_only(bl, slow)
        opener = asyncio.create_task(bl.check(ORG, ONE))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(bl.check(ORG, ONE)) for _ in range(3)]
        await asyncio.sleep(0)
        opener.cancel()
        await asyncio.sleep(0)
        gate.set()
        done = await asyncio.gather(*waiters)
        assert all(d.allowed for d in done)
        assert opener.cancelled()
        await bl.aclose()

    asyncio.run(asyncio.wait_for(main(), 5))


def test_return_leases_refunds_the_estimates_of_requests_still_in_flight(make_limiter):
    """Documented (test_leases.py too): return_leases()/close() send the lease back with its
    open requests; their estimates are no longer reserved in Redis (their commits are
    recorded on their own later)."""
    a = make_limiter(with_amount(2), leases=LeaseConfig(calls=2, seconds=60))
    d = a.check(ORG, ONE)
    assert d.leased
    a.return_leases()
    b = make_limiter(with_amount(2))
    assert sum(b.check(ORG, ONE).allowed for _ in range(3)) == 2


# ---------------------------------------------------------------------------------------
# regressions (each was a bug)
# ---------------------------------------------------------------------------------------

def test_commit_retried_after_the_lease_went_back_is_not_counted_twice(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    assert bl.commit(d.reservation, ONE).status == "committed"
    bl.return_leases()  # the lease's commit counts this usage
    again = bl.commit(d.reservation, ONE)  # a retry: "Retrying is safe (idempotent)"
    status = inv(make_limiter(POLICY).status(ORG))
    assert status.used == 1
    assert again.status == "duplicate"


def test_rate_limit_is_not_exceeded_by_local_refunds(make_limiter):
    bl = make_limiter(RATE_ONLY, leases=LeaseConfig(calls=4, seconds=1))
    admitted = 0
    for _ in range(20):  # same instant: a 5/s rate admits 5 (rates are charged at admission)
        d = bl.check(ORG, ONE)
        if d.allowed:
            admitted += 1
            bl.release(d.reservation)
    # exactly: fewer would mean a refused request that fits, or no admission at all
    assert admitted == 5


def test_an_unused_slice_does_not_eat_the_rate_limit(make_limiter):
    leased = make_limiter(RATE_ONLY, leases=LeaseConfig(calls=4, seconds=1))
    d = leased.check(ORG, ONE)
    assert d.allowed and not d.leased  # subjects with rate limits are never leased
    leased.commit(d.reservation, ONE)
    leased.return_leases()
    plain = make_limiter(RATE_ONLY)
    # one invocation so far: a 5/s rate has room for 4 more at this instant
    assert sum(plain.check(ORG, ONE).allowed for _ in range(4)) == 4


def test_a_request_that_fits_is_admitted_when_the_lease_is_too_small(make_limiter):
    bl = make_limiter(with_amount(14), leases=LeaseConfig(calls=10, seconds=60))
    in_flight = bl.check(ORG, ONE)
    assert in_flight.leased
    for _ in range(5):
        d = bl.check(ORG, ONE)
        assert d.leased
        bl.commit(d.reservation, ONE)
    # 5 used + 1 in flight: a request of 5 invocations fits the budget of 14 (11 <= 14);
    # without leases Redis would hold used 5, reserved 1 and admit it
    big = bl.check(ORG, Usage(input_tokens=10, invocations=5))
    assert big.allowed


def test_a_lease_that_does_not_fit_is_returned_before_the_next_redis_check(make_limiter):
    """Without requests in flight the retired lease goes back first (the nested slice check
    returns due leases), so the edge is exact."""
    bl = make_limiter(with_amount(14), leases=LeaseConfig(calls=10, seconds=60))
    for _ in range(6):
        d = bl.check(ORG, ONE)
        bl.commit(d.reservation, ONE)
    big = bl.check(ORG, Usage(input_tokens=10, invocations=5))
    assert big.allowed and not big.leased


def test_strict_mode_caps_each_leased_request_at_its_estimate(make_limiter):
    strict = POLICY.replace("timezone: UTC", "timezone: UTC\nstrict: true")
    plain = make_limiter(strict)
    d0 = plain.check(Subject("acme", "gpt", user="ref"), ONE)
    plain.commit(d0.reservation, Usage(input_tokens=500))
    assert cost(plain.status(ORG)).used == 10  # strict without leases: capped at 10

    bl = make_limiter(strict, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, Usage(input_tokens=500))
    bl.return_leases()
    assert cost(plain.status(ORG)).used == 20


def test_a_long_leased_request_stays_reserved_like_an_ordinary_one(make_limiter, clock):
    a = make_limiter(with_amount(10), leases=LeaseConfig(calls=4, seconds=1))
    d = a.check(ORG, ONE)
    assert d.leased
    clock.advance(20)  # an LLM call of 20 s, well within reservation_ttl_seconds (60)
    probe = a.check(Subject("acme", "gpt", user="x"), ONE, ttl=5)  # any call returns leases
    a.release(probe.reservation)
    b = make_limiter(with_amount(10))
    admitted = sum(b.check(ORG, ONE).allowed for _ in range(10))
    a.commit(d.reservation, ONE)
    assert admitted == 9
    assert inv(b.status(ORG)).used <= 10


def test_a_lease_redis_forgot_does_not_break_returns_or_lose_usage(make_limiter, raw_redis):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    x = Subject("acme", "gpt", user="x")
    y = Subject("acme", "gpt", user="y")
    dx = bl.check(x, ONE)
    bl.release(dx.reservation)  # x's lease: nothing used
    dy = bl.check(y, ONE)
    bl.commit(dy.reservation, ONE)  # y's lease: 1 used
    raw_redis.flushall()  # Redis restarted without persistence
    bl.return_leases()  # raises ReservationNotFound today
    status = inv(make_limiter(POLICY).status(y))
    assert status.used == 1  # y's usage reaches Redis (its commit carries its plan)


def test_zero_estimates_do_not_slip_through_an_exhausted_budget(make_limiter):
    a = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60))
    assert a.check(ORG, ZERO).allowed  # budget has room: an (empty) lease opens
    b = make_limiter(POLICY)
    b.record(ORG, Usage(invocations=25))  # another process exhausts the budget
    assert not b.check(ORG, ZERO).allowed  # Redis refuses a zero estimate now
    assert not a.check(ORG, ZERO).allowed


@pytest.mark.sync_only("patches _execute to reload the policy mid-check")
def test_policy_change_during_a_lease_opening_is_not_ignored(make_limiter):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=60))
    real = type(bl)._execute.__get__(bl)
    fired = [False]

    def reload_during_first_check(call):
        if call.script == "check" and not fired[0]:
            fired[0] = True
            bl.set_policy(parse_policy(with_amount(3)))  # e.g. a config-reload thread
        return real(call)

    bl._execute = scripts_only(bl, reload_during_first_check)
    admitted = 0
    for _ in range(10):
        d = bl.check(ORG, ONE)
        if d.allowed:
            admitted += 1
            bl.commit(d.reservation, ONE)
    # the new limit is 3: at least 3 are admitted (the reload refuses nothing that fits) and
    # at most one more, the in-flight request decided under the old policy
    assert 3 <= admitted <= 4, admitted


@pytest.mark.sync_only("reads leases._no_lease_until")
def test_refusal_memory_is_bounded(make_limiter, clock):
    bl = make_limiter(POLICY.replace("amount: 25", "amount: 1000"),
                      leases=LeaseConfig(calls=2000, seconds=1))  # a slice never fits
    for i in range(200):
        bl.check(Subject("acme", "gpt", user=f"u{i}"), ONE)
    assert bl.leases.refused == 200
    clock.advance(3600)
    bl.check(ORG, ONE)
    bl.return_leases()
    assert len(bl.leases._no_lease_until) <= 1


def test_leased_requests_after_the_period_ends_count_in_the_new_period(make_limiter, clock):
    clock.set(datetime(2026, 3, 10, 23, 59, 59, 500_000, tzinfo=timezone.utc))
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=10, seconds=1))
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    clock.advance(0.6)  # 00:00:00.1 on March 11
    d2 = bl.check(ORG, ONE)
    bl.commit(d2.reservation, ONE)
    bl.return_leases()
    assert inv(make_limiter(POLICY).status(ORG)).used == 1  # the March 11 request


def test_async_cancelled_opener_does_not_leak_its_slice(backend_url, clock):
    async def main():
        bl = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2,
                                leases=LeaseConfig(calls=8, seconds=60))
        real = type(bl)._execute.__get__(bl)
        replied = asyncio.Event()

        release = asyncio.Event()

        async def reply_held_up(call):
            reply = await real(call)  # Redis has reserved the slice
            replied.set()
            await release.wait()  # ...but the reply has not reached the caller yet
            return reply

        bl._execute = scripts_only(bl, reply_held_up)
        opener = asyncio.create_task(bl.check(ORG, ONE))
        await replied.wait()
        opener.cancel()  # e.g. asyncio.wait_for() timing out the caller
        with pytest.raises(asyncio.CancelledError):
            await opener
        release.set()  # the reply arrives after the caller gave up
        for _ in range(10):
            await asyncio.sleep(0)
        bl._execute = scripts_only(bl, real)
        await bl.aclose()
        plain = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2)
        reserved = inv(await plain.status(ORG)).reserved
        await plain.aclose()
        return reserved

    assert asyncio.run(asyncio.wait_for(main(), 5)) == 0


def test_usage_of_an_idle_process_reaches_redis_before_its_slice_expires(make_limiter, clock):
    a = make_limiter(with_amount(10), leases=LeaseConfig(calls=10, seconds=1))
    for _ in range(10):
        d = a.check(ORG, ONE)
        assert d.leased
        a.commit(d.reservation, ONE)
    # a goes quiet (end of a burst); nothing else is called on it
    clock.advance(40)
    deadline = time.monotonic() + 5
    while a.leases.open_leases and time.monotonic() < deadline:
        time.sleep(0.05)  # the lease timer (a thread, on the wall clock) hands it back
    b = make_limiter(with_amount(10))
    admitted = sum(b.check(ORG, ONE).allowed for _ in range(10))
    assert admitted == 0  # the budget of 10 was spent by a


def test_last_settle_of_a_retired_lease_returns_it(make_limiter, clock):
    bl = make_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=1))
    d = bl.check(ORG, ONE)
    clock.advance(1.5)
    other = bl.check(Subject("acme", "gpt", user="x"), ONE)  # due(): retires ORG's lease
    bl.release(other.reservation)
    assert bl.leases.open_leases == 2  # ORG's retired lease waits for d; x's is open
    bl.commit(d.reservation, ONE)  # its last outstanding request: it is ready to go back
    assert bl.leases.open_leases == 1
    assert inv(make_limiter(POLICY).status(ORG)).used == 1


def test_a_retired_lease_keeps_covering_what_was_spent_under_it(make_limiter):
    """Found by the threaded test in CI: the shrink of a retired lease kept only the calls in
    flight, so usage committed locally (not in Redis yet) was no longer reserved and another
    process admitted into it."""
    a = make_limiter(with_amount(10), leases=LeaseConfig(calls=10, seconds=60))
    for _ in range(8):
        d = a.check(ORG, ONE)
        a.commit(d.reservation, ONE)
    in_flight = a.check(ORG, ONE)
    assert in_flight.leased
    big = a.check(ORG, Usage(input_tokens=20, invocations=2))  # does not fit: lease retired
    assert not big.allowed  # 8 used + 1 in flight + 2 > 10
    b = make_limiter(with_amount(10))
    assert sum(b.check(ORG, ONE).allowed for _ in range(5)) == 1
    a.commit(in_flight.reservation, ONE)
    a.close()
    status = inv(b.status(ORG))
    assert status.used + status.reserved == 10


@pytest.mark.redis
def test_return_leases_reports_the_usage_it_could_not_send(make_flaky_limiter, flaky_redis):
    """A hand-back that cannot reach Redis is kept in-process and counted in the answer (a
    shutdown can tell "all sent" from "kept"); once Redis answers it reaches Redis, once."""
    bl = make_flaky_limiter(POLICY, leases=LeaseConfig(calls=4, seconds=60),
                            timeout=FLAKY_TIMEOUT)
    d = bl.check(ORG, ONE)
    bl.commit(d.reservation, ONE)
    flaky_redis.down()
    assert bl.return_leases() == 1
    flaky_redis.up()
    await_probe(bl)
    hand_back_all(bl)
    status = inv(make_flaky_limiter(POLICY).status(ORG))
    assert (status.used, status.reserved) == (1, 0)
