"""The local deny cache: exhausted budgets are answered in-process, and only those (both
clients, every backend)."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def test_exhausted_budget_is_denied_locally_until_ttl(make_limiter, clock):
    bl = make_limiter(BASIC, deny_cache_ttl=2.0)
    bl.record(ALICE, Usage(input_tokens=1000))  # the team's day budget is used up
    first = bl.check(ALICE, Usage(input_tokens=1))
    assert not first.allowed and not first.cached
    for _ in range(5):
        d = bl.check(ALICE, Usage(input_tokens=1))
        assert not d.allowed and d.cached
        assert str(d.blocked_by.scope) == "org:acme/team:eng" and d.retry_after > 0
    # a sibling of the same team is covered by the same exhausted budget
    assert bl.check(Subject("acme", "gpt", team="eng", user="bob")).cached
    # another team is not
    assert bl.check(Subject("acme", "gpt", team="ops", user="carl")).allowed
    clock.advance(2.1)
    assert not bl.check(ALICE, Usage(input_tokens=1)).cached


def test_reservations_alone_are_never_cached(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=1000))  # all reserved, nothing committed
    denied = bl.check(ALICE, Usage(input_tokens=1))
    assert not denied.allowed and not denied.cached
    bl.release(d.reservation)
    assert bl.check(ALICE, Usage(input_tokens=1)).allowed  # no under-grant after a release


def test_period_end_ends_the_cached_denial(make_limiter, clock):
    from datetime import datetime, timezone

    bl = make_limiter(BASIC, deny_cache_ttl=3600)
    clock.set(datetime(2026, 3, 10, 23, 59, 59, tzinfo=timezone.utc))
    bl.record(ALICE, Usage(input_tokens=1000))
    assert not bl.check(ALICE).allowed
    clock.set(datetime(2026, 3, 11, 0, 0, 0, tzinfo=timezone.utc))
    assert bl.check(ALICE, Usage(input_tokens=1)).allowed


def test_cache_can_be_switched_off_and_policy_reload_clears_it(make_limiter):
    off = make_limiter(BASIC, deny_cache_ttl=None)
    off.record(ALICE, Usage(input_tokens=1000))
    assert not off.check(ALICE).cached and not off.check(ALICE).cached
    on = make_limiter(BASIC)
    on.record(ALICE, Usage(input_tokens=1000))
    on.check(ALICE)
    assert on.check(ALICE).cached
    on.set_policy(on.policy)
    assert not on.check(ALICE).cached
