"""One host's clock cannot expire other hosts' reservations or refill a rate limit: scripts
compare times on Redis's clock, and a client whose clock is off is corrected to it."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine import transport as engine_module
from budgetlimiter.engine.transport import system_clock_ms

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
