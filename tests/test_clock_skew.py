"""One host's clock cannot expire other hosts' reservations or refill a rate limit: scripts
compare times on Redis's clock, and a client whose clock is off is corrected to it."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine import transport as engine_module
from budgetlimiter.engine.transport import system_clock_ms

from .frozen_redis import freeze_redis_time

TEN = """
reservation_ttl_seconds: 600
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {limits: [{metric: invocations, amount: 10, period: day}]}}
"""
RATE = """
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {rates: [{metric: invocations, limit: 5, per: minute}]}}
"""
ALICE = Subject("acme", "m", user="alice")


@pytest.mark.parametrize("skew_s", [700, -300])
def test_a_skewed_clock_cannot_expire_live_reservations(backend_url, skew_s):
    pol = parse_policy(TEN)
    good = BudgetLimiter(pol, backend_url, timeout=2.0)
    bad = BudgetLimiter(pol, backend_url, timeout=2.0, max_clock_skew=1.0,
                        clock=lambda: system_clock_ms() + skew_s * 1000)
    try:
        assert all(good.check(ALICE, Usage(1, 0)).allowed for _ in range(10))  # all running
        for _ in range(10):
            d = bad.check(ALICE, Usage(1, 0))
            assert not d.allowed, "a skewed clock swept live reservations as expired"
        assert d.blocked_by is not None and d.blocked_by.reserved == 10
        assert abs(bad.clock() - system_clock_ms()) < 2000  # corrected to Redis's time
        taken = good.scope_status("org:acme")[0]
        assert (taken.used, taken.reserved) == (0, 10)
    finally:
        good.close()
        bad.close()


def test_a_clock_ahead_gets_no_extra_burst_from_a_rate_limit(backend_url):
    pol = parse_policy(RATE)
    good = BudgetLimiter(pol, backend_url, timeout=2.0)
    bad = BudgetLimiter(pol, backend_url, timeout=2.0, max_clock_skew=1.0,
                        clock=lambda: system_clock_ms() + 600_000)
    try:
        assert sum(good.check(ALICE).allowed for _ in range(5)) == 5  # the burst is spent
        assert sum(bad.check(ALICE).allowed for _ in range(5)) == 0
    finally:
        good.close()
        bad.close()


def test_the_system_clock_is_checked_against_redis_by_default(backend_url, monkeypatch):
    monkeypatch.setattr(engine_module, "system_clock_ms", lambda: system_clock_ms() - 120_000)
    pol = parse_policy(TEN)
    bl = BudgetLimiter(pol, backend_url, timeout=2.0)  # no clock given: the system clock
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        assert abs(bl.engine.clock_offset_ms - 120_000) < 2000
        # the period (day) is the one of Redis's time, not two minutes earlier
        assert bl.scope_status("org:acme")[0].reserved == 1
        assert bl.record(ALICE, Usage(1, 0)).status == "recorded"
    finally:
        bl.close()


def test_an_injected_clock_is_trusted_unless_a_tolerance_is_given(backend_url):
    pol = parse_policy(TEN)
    sim = BudgetLimiter(pol, backend_url, timeout=2.0, clock=lambda: 1_700_000_000_000)
    try:
        assert sim.check(ALICE, Usage(1, 0)).allowed
        assert sim.engine.clock_offset_ms == 0 and sim.clock() == 1_700_000_000_000
    finally:
        sim.close()


# Redis's TIME cannot be set, so the exact arithmetic of the correction is shown on memory://
# with Redis's clock fixed (see tests/frozen_redis.py).
REDIS_S = 1_773_140_400  # a whole second of Redis's clock (2026-03-10 11:00:00 UTC)


def _memory_limiter(client_ms: int, skew_s: float = 1.0) -> BudgetLimiter:
    import uuid

    return BudgetLimiter(parse_policy(TEN), f"memory://{uuid.uuid4().hex}", timeout=2.0,
                         clock=lambda: client_ms, max_clock_skew=skew_s)


def test_a_corrected_clock_is_redis_time_to_the_millisecond(monkeypatch):
    # Redis says 11:00:00.999000 (microseconds 999000: 999 ms, not 998 nor 1000 nor 0)
    freeze_redis_time(monkeypatch, REDIS_S + 0.999)
    client_ms = REDIS_S * 1000 - 600_000  # ten minutes behind, frozen
    bl = _memory_limiter(client_ms)
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        assert bl.engine.clock_offset_ms == 600_999
        assert bl.clock() == REDIS_S * 1000 + 999
    finally:
        bl.close()


@pytest.mark.parametrize(("behind_ms", "corrected"), [(1000, False), (1001, True)])
def test_a_clock_off_by_exactly_the_tolerance_is_trusted_and_one_ms_more_is_corrected(
        monkeypatch, behind_ms, corrected):
    freeze_redis_time(monkeypatch, REDIS_S + 0.5)
    bl = _memory_limiter(REDIS_S * 1000 + 500 - behind_ms, skew_s=1.0)
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        assert bl.engine.clock_offset_ms == (behind_ms if corrected else 0)
    finally:
        bl.close()


@pytest.mark.parametrize("skew_s", [0.0005, 0.0, -1.0, 3600.5])
def test_a_clock_tolerance_outside_a_millisecond_to_an_hour_is_refused(skew_s):
    with pytest.raises(ValueError, match="max_clock_skew"):
        _memory_limiter(REDIS_S * 1000, skew_s=skew_s)


def test_a_clock_that_keeps_jumping_raises_clock_skew_and_decides_nothing(backend_url):
    # every reading jumps another hour: each correction is stale by the next reading, so
    # after the retries the client gives up with ClockSkew (a distinct error, never bad
    # input) and nothing is reserved
    from budgetlimiter import ClockSkew

    jumps = iter(range(1, 1_000))
    bad = BudgetLimiter(parse_policy(TEN), backend_url, timeout=2.0, max_clock_skew=1.0,
                        clock=lambda: system_clock_ms() + next(jumps) * 3_600_000)
    good = BudgetLimiter(parse_policy(TEN), backend_url, timeout=2.0)
    try:
        with pytest.raises(ClockSkew, match="keeps disagreeing"):
            bad.check(ALICE, Usage(1, 0))
        taken = good.scope_status("org:acme")[0]
        assert (taken.used, taken.reserved) == (0, 0)
    finally:
        bad.close()
        good.close()


def test_the_sidecar_answers_clock_skew_with_503_and_retry_after():
    # the sidecar used to map this library error to 422 invalid_input: the caller's request
    # was fine, the decision could not be made
    from budgetlimiter import ClockSkew
    from budgetlimiter.server.problems import from_library_error

    problem = from_library_error(ClockSkew("this host's clock keeps disagreeing with Redis's"))
    assert (problem.status, problem.headers.get("Retry-After")) == (503, "1")
def test_a_settle_that_is_the_first_call_of_a_skewed_client_is_corrected_and_applied(
        backend_url, monkeypatch):
    """settle.lua answers a clock off by more than the tolerance as check.lua does: the client
    learns Redis's time and settles again (here a record, its very first call)."""
    monkeypatch.setattr(engine_module, "system_clock_ms", lambda: system_clock_ms() - 120_000)
    bl = BudgetLimiter(parse_policy(TEN), backend_url, timeout=2.0)
    try:
        assert bl.record(ALICE, Usage(1, 0)).status == "recorded"
        assert abs(bl.engine.clock_offset_ms - 120_000) < 2000
        assert bl.scope_status("org:acme")[0].used == 1
    finally:
        bl.close()


def test_a_call_that_reached_redis_late_is_planned_again_without_touching_the_clock(
        monkeypatch):
    """An overloaded process: the call waits 2 s between planning and Redis (more than the
    1 s the clock check allows). Redis's time lies between the planning and the reply, so
    the host's clock is right: the call is planned again with the time now, and no offset is
    learnt (learning one from the late call would set -0.5 s and skew every later plan)."""
    import uuid

    from .faults import own_execute

    freeze_redis_time(monkeypatch, REDIS_S + 1.5)
    now = {"ms": REDIS_S * 1000}
    bl = BudgetLimiter(parse_policy(TEN), f"memory://{uuid.uuid4().hex}", timeout=2.0,
                       clock=lambda: now["ms"], max_clock_skew=1.0)
    real = own_execute(bl)
    delays = [2000]

    def late(request):  # the first check waits 2 s in the process before it is sent
        if delays and getattr(request, "script", "") == "check":
            now["ms"] += delays.pop()
        return real(request)

    bl._execute = late
    try:
        d = bl.check(ALICE, Usage(1, 0))
        assert d.allowed and not delays
        assert bl.engine.clock_offset_ms == 0
        assert d.reservation is not None
        assert d.reservation.created_ms == REDIS_S * 1000 + 2000  # planned again, not skewed
    finally:
        bl.close()


def test_a_clock_off_is_still_corrected_when_its_call_was_also_late(monkeypatch):
    """Late and off: Redis's time is outside planning..reply, so the offset is learnt."""
    import uuid

    from .faults import own_execute

    freeze_redis_time(monkeypatch, REDIS_S + 0.5)
    now = {"ms": REDIS_S * 1000 - 600_000}  # ten minutes behind
    bl = BudgetLimiter(parse_policy(TEN), f"memory://{uuid.uuid4().hex}", timeout=2.0,
                       clock=lambda: now["ms"], max_clock_skew=1.0)
    real = own_execute(bl)
    delays = [2000]

    def late(request):
        if delays and getattr(request, "script", "") == "check":
            now["ms"] += delays.pop()
        return real(request)

    bl._execute = late
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        assert bl.engine.clock_offset_ms == 600_000 - 2000 + 500
    finally:
        bl.close()
