"""GCRA rate limits with ``burst`` != ``limit``: the burst at once, then the steady refill.

The rule (README "Semantics", lua/check.lua ``read_rates``): each unit moves the bucket's
theoretical arrival time (TAT) by ``interval = per / limit``; a request is admitted when
``max(TAT, now) + estimate * interval - now <= burst * interval``. So from an empty bucket
``burst`` units go at once, then one more every ``interval``, and an idle bucket refills to
``burst``, never more. Exact admission counts at exact injected times, on memory:// and a
real redis-server, sync and asyncio.
"""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter import Subject, Usage

S = Subject("acme", "gpt")


def rate_policy(limit: int, burst: int | None, metric: str = "invocations",
                per: str = "second") -> str:
    b = f", burst: {burst}" if burst is not None else ""
    return f"""
timezone: UTC
pricing:
  gpt: {{input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    rates:
      - {{metric: {metric}, limit: {limit}, per: {per}{b}}}
"""


def admitted(bl: Any, tries: int, estimate: Usage | None = None) -> int:
    return sum(bl.check(S, estimate).allowed for _ in range(tries))


def rate(bl: Any) -> Any:
    (lim,) = bl.status(S)
    return lim


@pytest.mark.parametrize(("burst", "at_once"), [
    (30, 30),   # burst above the rate: 30 at once (ignoring burst would give 10)
    (3, 3),     # burst below the rate: 3 at once (ignoring burst would give 10)
    (None, 10),  # no burst: the limit
], ids=["burst30", "burst3", "default"])
def test_the_burst_goes_at_once_then_one_unit_per_interval(make_limiter, clock, burst,
                                                            at_once):
    """limit 10 per second: interval 100 ms."""
    bl = make_limiter(rate_policy(10, burst))
    assert admitted(bl, at_once + 10) == at_once
    refused = bl.check(S)
    assert refused.blocked_by is not None and refused.blocked_by.kind == "rate"
    # TAT is burst * 100 ms ahead; one more unit needs it at most burst * 100 ms ahead
    assert refused.retry_after == pytest.approx(0.1)
    clock.advance(0.05)  # half an interval: nothing
    assert admitted(bl, 5) == 0
    clock.advance(0.05)  # a full interval: exactly one
    assert admitted(bl, 5) == 1
    clock.advance(0.3)  # three intervals: exactly three (the smallest burst holds three)
    assert admitted(bl, 20) == 3
    lim = rate(bl)
    assert (lim.limit, lim.burst, lim.taken, lim.remaining) == (
        10, at_once, at_once, 0)


@pytest.mark.parametrize(("burst", "idle", "refilled"), [
    (30, 0.5, 5),    # half a second refills 5
    (30, 2.9, 29),   # 2.9 s refills 29
    (30, 10.0, 30),  # ten seconds would be 100, the bucket holds 30
    (3, 10.0, 3),    # and 3 for a small burst
])
def test_an_idle_bucket_refills_at_the_rate_up_to_the_burst(make_limiter, clock, burst, idle,
                                                            refilled):
    bl = make_limiter(rate_policy(10, burst))
    assert admitted(bl, burst + 5) == burst
    clock.advance(idle)
    assert rate(bl).remaining == refilled
    assert admitted(bl, 50) == refilled


def test_a_token_rate_admits_its_burst_of_tokens_then_the_rate(make_limiter, clock):
    """total_tokens 600 per minute (interval 100 ms per token), burst 1000: two requests of
    400 fit (800 <= 1000), a third would put the TAT 120 s ahead, 20 s over the 100 s the
    burst allows; 20 s later it fits, and the bucket is full again."""
    bl = make_limiter(rate_policy(600, 1000, metric="total_tokens", per="minute"))
    big = Usage(input_tokens=400)
    assert admitted(bl, 2, big) == 2
    refused = bl.check(S, big)
    assert not refused.allowed and refused.retry_after == pytest.approx(20.0)
    clock.advance(19.9)
    assert not bl.check(S, big).allowed
    clock.advance(0.1)
    assert bl.check(S, big).allowed
    assert not bl.check(S, Usage(input_tokens=1)).allowed  # 1000 of 1000
    assert rate(bl).taken == 1000


def test_a_request_larger_than_the_burst_never_fits(make_limiter, clock):
    """Not even on an idle bucket: 40 units need the TAT 4 s ahead, the burst allows 3 s."""
    bl = make_limiter(rate_policy(10, 30))
    clock.advance(3600)
    assert not bl.check(S, Usage(invocations=40)).allowed
    assert bl.check(S, Usage(invocations=30)).allowed  # the burst exactly
