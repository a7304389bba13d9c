"""How long a reservation lives: its ttl (at most seven days), and its key in Redis that long
plus the idempotency window (so a commit retried after the expiry still finds its marker)."""

from __future__ import annotations

import pytest

from budgetlimiter import InvalidInput, Subject, Usage

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")
SEVEN_DAYS_S = 7 * 86400
SLACK_MS = 60_000  # the key's TTL shrinks while the test runs; a minute cannot be reached


def test_a_reservation_ttl_of_exactly_seven_days_is_accepted_and_one_ms_more_is_refused(
        make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=10), ttl=SEVEN_DAYS_S)
    assert d.allowed and d.reservation is not None
    assert d.reservation.expires_ms - d.reservation.created_ms == SEVEN_DAYS_S * 1000
    before = [(s.used, s.reserved) for s in bl.status(ALICE)]
    with pytest.raises(InvalidInput, match="reservation ttl"):
        bl.check(ALICE, Usage(input_tokens=10), ttl=SEVEN_DAYS_S + 0.001)
    assert [(s.used, s.reserved) for s in bl.status(ALICE)] == before


@pytest.mark.parametrize("ttl", [0.001, 1])
def test_a_reservation_ttl_down_to_one_ms_is_accepted(make_limiter, ttl):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=10), ttl=ttl)
    assert d.reservation is not None
    assert d.reservation.expires_ms - d.reservation.created_ms == round(ttl * 1000)


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_reservation_ttl_of_zero_or_less_is_refused_and_changes_nothing(make_limiter, ttl):
    bl = make_limiter(BASIC)
    with pytest.raises(InvalidInput, match="reservation ttl"):
        bl.check(ALICE, Usage(input_tokens=10), ttl=ttl)
    assert all((s.used, s.reserved) == (0, 0) for s in bl.status(ALICE))


def test_a_reservation_key_lives_its_ttl_plus_the_idempotency_window(make_limiter, raw_redis):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=10), ttl=3600)
    assert d.reservation is not None
    expected_ms = 3600_000 + bl.policy.idempotency_seconds * 1000
    pttl = raw_redis.pttl(bl.keys.reservation("acme", d.reservation.id))
    assert expected_ms - SLACK_MS < pttl <= expected_ms
