"""The counter layout behind the one-command-per-budget admit path, on every backend and
both clients.

Each budget counter keeps ``u:<m>`` (used) and ``h:<m>`` (held = used + reserved). An admitted
check does one HINCRBY of ``h`` per budget and compares; anything else (a budget or rate limit
that does not fit, a carry not computed yet, a status read) undoes that and takes the full path,
which reads both. These tests pin down that every writer keeps ``h = u + reserved`` and that
the fast path's undo leaves nothing behind."""

from __future__ import annotations

from datetime import datetime, timezone

from budgetlimiter import Metric, Scope, Subject, Usage
from budgetlimiter.durable.adjust import apply_adjustment
from budgetlimiter.durable.store.sql import Store

from .policies import BASIC, BUDGETS_AND_RATE

ALICE = Subject("acme", "gpt", team="eng", user="alice")
TEAM = "org:acme/team:eng"


def split(limiter, scope: str, metric: str = "cost") -> tuple[int, int, int]:
    """(taken, used, reserved) of ``scope`` as a status read reports them."""
    found = [s for s in limiter.scope_status(scope) if s.metric.value == metric]
    assert found, f"no {metric} limit on {scope}"
    s = found[0]
    assert s.used is not None and s.reserved is not None
    assert s.taken == s.used + s.reserved
    return s.taken, s.used, s.reserved


def raw_counters(redis) -> dict[str, dict[bytes, bytes]]:
    return {k.decode(): redis.hgetall(k) for k in redis.scan_iter("*:c:*")}


def test_admitted_check_reports_taken_and_status_splits_it(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=100, output_tokens=200))  # 500 micro-USD
    team = next(s for s in d.limits if str(s.scope) == TEAM)
    assert (team.taken, team.used, team.reserved, team.remaining) == (500, None, None, 500)
    body = team.to_dict()
    assert (body["taken"], body["used"], body["reserved"]) == ("0.000500", None, None)
    assert split(bl, TEAM) == (500, 0, 500)
    bl.commit(d.reservation, Usage(input_tokens=100))  # 100
    assert split(bl, TEAM) == (100, 100, 0)
    d2 = bl.check(ALICE, Usage(input_tokens=300))
    assert next(s for s in d2.limits if str(s.scope) == TEAM).taken == 400
    bl.release(d2.reservation)
    assert split(bl, TEAM) == (100, 100, 0)


def test_refusal_by_a_later_budget_undoes_the_earlier_ones(make_limiter, raw_redis):
    """The org's budget is reserved first and the team's refuses: the org's counter must be
    exactly what it was (same fields, same values) and the refusal reports the split."""
    bl = make_limiter(BASIC)
    bl.commit(bl.check(ALICE, Usage(input_tokens=200)).reservation, Usage(input_tokens=200))
    before = raw_counters(raw_redis)
    refused = bl.check(ALICE, Usage(input_tokens=900))  # team: 200 + 900 > 1000
    assert not refused.allowed
    b = refused.blocked_by
    assert b is not None and str(b.scope) == TEAM
    assert (b.used, b.reserved, b.taken) == (200, 0, 200)
    assert "used 0.000200, reserved 0.000000" in str(refused)
    assert raw_counters(raw_redis) == before


def test_refusal_by_a_rate_limit_undoes_the_budgets(make_limiter, raw_redis):
    bl = make_limiter(BUDGETS_AND_RATE)
    s = Subject("acme", "gpt")
    est = Usage(input_tokens=10)
    assert bl.check(s, est).allowed and bl.check(s, est).allowed
    before = raw_counters(raw_redis)
    third = bl.check(s, est)
    assert not third.allowed and third.blocked_by is not None
    assert third.blocked_by.kind == "rate"
    # the budgets were reserved by the fast path, then given back: nothing changed
    assert raw_counters(raw_redis) == before
    assert split(bl, "org:acme", "total_tokens") == (20, 0, 20)
    # and the budgets in a refusal still report what they hold
    tokens = next(x for x in third.limits if x.metric is Metric.TOTAL_TOKENS)
    assert (tokens.used, tokens.reserved) == (0, 20)


def test_zero_estimate_is_refused_by_an_exhausted_hard_budget(make_limiter):
    bl = make_limiter(BUDGETS_AND_RATE)
    s = Subject("acme", "gpt")
    d = bl.check(s, Usage(input_tokens=100))
    assert d.allowed
    bl.commit(d.reservation, Usage(input_tokens=100))
    zero = bl.check(s, Usage(input_tokens=0))
    assert not zero.allowed and zero.blocked_by is not None
    assert zero.blocked_by.metric is Metric.TOTAL_TOKENS
    assert split(bl, "org:acme", "total_tokens") == (100, 100, 0)


def test_expired_reservations_are_refunded_from_held(make_limiter, clock):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=800), ttl=30)
    clock.advance(31)
    assert split(bl, TEAM) == (0, 0, 0)  # the status read sweeps it
    late = bl.commit(d.reservation, Usage(input_tokens=50))
    assert late.status == "late"
    assert split(bl, TEAM) == (50, 50, 0)


def test_adjustments_move_used_and_keep_what_is_reserved(make_limiter, tmp_path):
    bl = make_limiter(BASIC)
    ops = make_limiter(BASIC, client="sync")  # the operator's tool (adjustments are sync)
    store = Store(f"sqlite:///{tmp_path}/adj.db")
    store.migrate()
    bl.check(ALICE, Usage(input_tokens=300))  # reserved, not committed
    team = Scope.parse(TEAM)
    apply_adjustment(ops, store, team, Metric.COST, 100, "ops", "debit")
    assert split(bl, TEAM) == (400, 100, 300)
    apply_adjustment(ops, store, team, Metric.COST, -1000, "ops", "credit below zero")
    assert split(bl, TEAM) == (300, 0, 300)  # used stops at zero; the reservation stays
    # the reservation still counts against the limit: 300 + 800 > 1000
    assert not bl.check(ALICE, Usage(input_tokens=800)).allowed
    assert bl.check(ALICE, Usage(input_tokens=700)).allowed
    store.close()


def test_a_fresh_period_counter_gets_its_expiry_on_the_fast_path(make_limiter, clock,
                                                                raw_redis):
    bl = make_limiter(BASIC)
    clock.set(datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    assert bl.check(ALICE, Usage(input_tokens=10)).allowed
    counters = list(raw_redis.scan_iter("*:c:*"))
    assert counters
    for key in counters:
        assert raw_redis.pttl(key) > 0, key
