"""The hot path on every backend (memory:// and a real redis-server) and both clients: check,
commit, release, record, status, expiry, periods, rollover, thresholds, rate limits."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from budgetlimiter import Metric, ReservationNotFound, ReservationSettled, Scope, Subject, Usage
from budgetlimiter.engine.keys import KeySpace

from .policies import BASIC, RATES, ROLLOVER, THRESHOLDS

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def by_scope(limits, scope: str, metric: str = "cost"):
    found = [s for s in limits if str(s.scope) == scope and s.metric.value == metric]
    assert found, f"no {metric} limit on {scope}"
    return found[0]


def test_check_reserves_and_commit_replaces_estimate(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=100, output_tokens=200))  # 500 micro-USD
    assert d.allowed and d.reservation is not None
    team = by_scope(d.limits, "org:acme/team:eng")
    # an admitted check reads used + reserved as one counter; status() splits it
    assert (team.taken, team.used, team.reserved, team.limit) == (500, None, None, 1000)
    assert d.remaining("org:acme/team:eng", "cost") == 500
    team = by_scope(bl.status(ALICE), "org:acme/team:eng")
    assert (team.taken, team.used, team.reserved) == (500, 0, 500)
    r = bl.commit(d.reservation, Usage(input_tokens=100, output_tokens=50))  # 200
    assert r.status == "committed" and r.actual is not None and r.actual.cost == 200
    team = by_scope(bl.status(ALICE), "org:acme/team:eng")
    assert (team.used, team.reserved) == (200, 0)
    org = by_scope(bl.status(ALICE), "org:acme")
    assert (org.used, org.reserved) == (200, 0)


def test_denied_check_is_all_or_nothing(make_limiter):
    bl = make_limiter(BASIC)
    ok = bl.check(ALICE, Usage(input_tokens=900))
    assert ok.allowed
    before = {(str(s.scope), s.period): (s.used, s.reserved) for s in bl.status(ALICE)}
    denied = bl.check(ALICE, Usage(input_tokens=200))
    assert not denied.allowed and denied.reservation is None
    assert denied.blocked_by is not None
    assert str(denied.blocked_by.scope) == "org:acme/team:eng"
    assert denied.blocked_by.metric is Metric.COST
    assert denied.reason == "budget_exceeded"
    # period end of the daily budget
    assert denied.resets_at == datetime(2026, 3, 11, tzinfo=timezone.utc)
    after = {(str(s.scope), s.period): (s.used, s.reserved) for s in bl.status(ALICE)}
    assert after == before  # org and user counters untouched


def test_request_that_fits_exactly_is_admitted(make_limiter):
    bl = make_limiter(BASIC)
    assert bl.check(ALICE, Usage(input_tokens=400)).allowed
    assert bl.check(ALICE, Usage(input_tokens=600)).allowed  # exactly 1000 of 1000
    assert not bl.check(ALICE, Usage(input_tokens=1)).allowed
    assert not bl.check(ALICE, Usage(input_tokens=0)).allowed  # exhausted budget blocks all


def test_commit_is_idempotent(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=300))
    first = bl.commit(d.reservation, Usage(input_tokens=100))
    second = bl.commit(d.reservation, Usage(input_tokens=100))
    assert (first.status, second.status) == ("committed", "duplicate")
    assert by_scope(bl.status(ALICE), "org:acme/team:eng").used == 100


def test_release_refunds_and_is_idempotent(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=300))
    assert bl.release(d.reservation).status == "released"
    assert bl.release(d.reservation).status == "duplicate"
    team = by_scope(bl.status(ALICE), "org:acme/team:eng")
    assert (team.used, team.reserved) == (0, 0)
    with pytest.raises(ReservationSettled, match="was released"):  # never a silent duplicate
        bl.commit(d.reservation, Usage(input_tokens=1))


def test_record_is_idempotent_by_request_id(make_limiter):
    bl = make_limiter(BASIC)
    a = bl.record(ALICE, Usage(input_tokens=70), request_id="req-1")
    b = bl.record(ALICE, Usage(input_tokens=70), request_id="req-1")
    assert (a.status, b.status) == ("recorded", "duplicate")
    assert by_scope(bl.status(ALICE), "org:acme").used == 70


def test_record_never_blocks_and_reports_truthfully(make_limiter):
    bl = make_limiter(BASIC)
    bl.record(ALICE, Usage(input_tokens=5000))
    team = by_scope(bl.status(ALICE), "org:acme/team:eng")
    assert team.used == 5000 and team.state == "blocked"
    assert not bl.check(ALICE, Usage(input_tokens=1)).allowed


def test_expired_reservation_is_refunded_lazily_and_late_commit_counts(make_limiter, clock):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=800), ttl=30)
    assert not bl.check(ALICE, Usage(input_tokens=800)).allowed
    clock.advance(31)
    # 800 + 300 would not fit the team's 1000: the check sweeps the expired reservation first
    again = bl.check(ALICE, Usage(input_tokens=300))
    assert again.allowed
    # taken, not reserved: whether this check took the full path (reading used and reserved
    # apart) depends on whether its sampled sweep had already refunded the expired one
    assert by_scope(again.limits, "org:acme/team:eng").taken == 300
    late = bl.commit(d.reservation, Usage(input_tokens=50))
    assert late.status == "late"
    team = by_scope(bl.status(ALICE), "org:acme/team:eng")
    assert (team.used, team.reserved) == (50, 300)


def test_sweep_runs_on_status_reads_and_on_a_sample_of_checks(make_limiter, clock, raw_redis):
    bl = make_limiter(BASIC)
    bl.check(ALICE, Usage(input_tokens=100), ttl=30)
    clock.advance(31)
    # a status read always sweeps: the expired reservation is gone from every view
    assert by_scope(bl.status(ALICE), "org:acme/team:eng").reserved == 0
    for _ in range(40):
        bl.check(ALICE, Usage(input_tokens=1), ttl=1)
    clock.advance(2)
    # a check sweeps when the sampler says so (about one in eight by default; here every
    # eighth, deterministically): seven checks leave the 40 expired, the eighth refunds them
    checks = iter(range(1, 100))
    bl.engine.sweep_sampler = lambda: next(checks) % 8 == 0
    rx = KeySpace().reservations_by_expiry("acme")
    for _ in range(7):
        bl.check(ALICE, Usage(input_tokens=0), ttl=60)
    assert raw_redis.zcount(rx, "-inf", clock.now_ms) == 40
    bl.check(ALICE, Usage(input_tokens=0), ttl=60)
    assert raw_redis.zcount(rx, "-inf", clock.now_ms) == 0


def test_commit_after_redis_forgot_reservation_still_counts(make_limiter, raw_redis):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=300))
    raw_redis.flushall()
    r = bl.commit(d.reservation, Usage(input_tokens=120))
    assert r.status == "committed"
    assert by_scope(bl.status(ALICE), "org:acme/team:eng").used == 120


def test_release_of_unknown_id_is_an_error(make_limiter):
    bl = make_limiter(BASIC)
    with pytest.raises(ReservationNotFound):
        bl.release("never-made", org="acme")


def test_overshoot_is_recorded_truthfully_and_reported(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(input_tokens=100))
    r = bl.commit(d.reservation, Usage(input_tokens=1500))
    assert r.overshoot
    assert by_scope(bl.status(ALICE), "org:acme/team:eng").used == 1500


def test_strict_mode_caps_counted_usage_at_the_estimate(make_limiter):
    bl = make_limiter(BASIC.replace("timezone: UTC", "timezone: UTC\nstrict: true"))
    d = bl.check(ALICE, Usage(input_tokens=100))
    r = bl.commit(d.reservation, Usage(input_tokens=1500))
    assert r.overshoot
    assert by_scope(bl.status(ALICE), "org:acme/team:eng").used == 100


def test_daily_budget_resets_at_midnight_of_the_policy_timezone(make_limiter, clock):
    bl = make_limiter(BASIC)
    clock.set(datetime(2026, 3, 10, 23, 59, 59, tzinfo=timezone.utc))
    d = bl.check(ALICE, Usage(input_tokens=1000))
    bl.commit(d.reservation, Usage(input_tokens=1000))
    assert not bl.check(ALICE, Usage(input_tokens=1)).allowed
    clock.set(datetime(2026, 3, 11, 0, 0, 0, tzinfo=timezone.utc))
    assert bl.check(ALICE, Usage(input_tokens=1000)).allowed
    # the monthly org budget kept counting across the day boundary
    assert by_scope(bl.status(ALICE), "org:acme").used == 1000


def test_soft_limit_warns_but_admits(make_limiter):
    bl = make_limiter(BASIC)
    bob = Subject("acme", "gpt", team="ops", user="bob")
    d = bl.check(bob, Usage(input_tokens=1500))
    assert d.allowed
    assert [w.metric for w in d.warnings] == [Metric.TOTAL_TOKENS]


def test_invocation_budget(make_limiter):
    bl = make_limiter(BASIC)
    bob = Subject("acme", "copilot", team="ops", user="bob")
    results = [bl.check(bob).allowed for _ in range(4)]
    assert results == [True, True, True, False]


def test_rate_limit_smooth_refill_and_retry_after(make_limiter, clock):
    bl = make_limiter(RATES)
    s = Subject("acme", "gpt", team="t", user="u")
    allowed = [bl.check(s).allowed for _ in range(6)]
    assert allowed == [True] * 5 + [False]
    denied = bl.check(s)
    assert denied.blocked_by is not None and denied.blocked_by.kind == "rate"
    assert denied.retry_after == pytest.approx(0.2, abs=0.002)
    clock.advance(0.2)
    assert bl.check(s).allowed
    assert not bl.check(s).allowed


def test_token_rate_limit_blocks_big_requests(make_limiter, clock):
    bl = make_limiter(RATES)
    s = Subject("acme", "gpt")
    assert bl.check(s, Usage(input_tokens=500)).allowed
    d = bl.check(s, Usage(input_tokens=200))
    assert not d.allowed and d.blocked_by.metric is Metric.TOTAL_TOKENS
    assert d.retry_after == pytest.approx(10.0, abs=0.01)  # 100 tokens at 10 tokens/s


def test_denied_request_consumes_no_rate_budget(make_limiter, clock):
    bl = make_limiter(RATES)
    s = Subject("acme", "gpt")
    assert bl.check(s, Usage(input_tokens=590)).allowed
    for _ in range(10):
        assert not bl.check(s, Usage(input_tokens=100)).allowed
    clock.advance(1.0)  # 10 tokens refilled
    assert bl.check(s, Usage(input_tokens=10)).allowed


def _spend(bl, s, n):
    admitted = 0
    for _ in range(n):
        d = bl.check(s)
        if d.allowed:
            bl.commit(d.reservation, Usage())
            admitted += 1
    return admitted


def test_accumulate_rollover_with_cap(make_limiter, clock):
    bl = make_limiter(ROLLOVER)
    s = Subject("acme", "gpt")
    clock.set(datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    assert _spend(bl, s, 1) == 1
    # day 1: 9 unused, capped at 5
    clock.set(datetime(2026, 3, 11, 12, tzinfo=timezone.utc))
    assert _spend(bl, s, 20) == 15
    lim = bl.status(s)[0]
    assert (lim.limit, lim.carry, lim.used) == (15, 5, 15)
    # day 2 used everything: nothing carries into day 3
    clock.set(datetime(2026, 3, 12, 12, tzinfo=timezone.utc))
    assert _spend(bl, s, 20) == 10


def test_uncommitted_reservations_count_as_unused_for_rollover(make_limiter, clock):
    bl = make_limiter(ROLLOVER)
    s = Subject("acme", "gpt")
    clock.set(datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    assert _spend(bl, s, 10) == 10
    clock.set(datetime(2026, 3, 11, 12, tzinfo=timezone.utc))
    assert sum(bl.check(s).allowed for _ in range(20)) == 10  # reserved, never committed
    clock.set(datetime(2026, 3, 12, 12, tzinfo=timezone.utc))  # they expired and were refunded
    assert _spend(bl, s, 20) == 15


def test_thresholds_fire_once_each(make_limiter):
    bl = make_limiter(THRESHOLDS)
    s = Subject("acme", "gpt")
    fired = []
    for _ in range(12):
        fired += [t.threshold for t in bl.record(s, Usage()).thresholds]
    assert fired == [50, 90, 100]


def test_thresholds_jumped_over_all_fire(make_limiter):
    bl = make_limiter(THRESHOLDS)
    s = Subject("acme", "gpt")
    r = bl.record(s, Usage(invocations=10))
    assert [t.threshold for t in r.thresholds] == [50, 90, 100]
    t = r.thresholds[0]
    assert (str(t.scope), t.metric, t.period, t.used, t.limit) == (
        "org:acme", Metric.INVOCATIONS, "day", 10, 10)


def test_unknown_org_gets_no_limits_but_is_recorded(make_limiter):
    bl = make_limiter(BASIC)
    s = Subject("globex", "gpt")
    d = bl.check(s, Usage(input_tokens=10**9))
    assert d.allowed and d.limits == ()


def test_batch_check(make_limiter):
    bl = make_limiter(BASIC)
    items = [(ALICE, Usage(input_tokens=400))] * 3 + [(Subject("acme", "gpt"), Usage())]
    decisions = bl.check_batch(items)
    assert [d.allowed for d in decisions] == [True, True, False, True]


def test_cost_given_explicitly_overrides_pricing(make_limiter):
    bl = make_limiter(BASIC)
    d = bl.check(ALICE, Usage(cost=Decimal("0.0009")))
    assert by_scope(d.limits, "org:acme/team:eng").taken == 900


def test_status_scope_strings_round_trip(make_limiter):
    bl = make_limiter(BASIC)
    for s in bl.status(ALICE):
        assert Scope.parse(str(s.scope)) == s.scope


def test_scope_status_reads_one_scope(make_limiter):
    bl = make_limiter(BASIC)
    bl.record(ALICE, Usage(input_tokens=300))
    team = bl.scope_status("org:acme/team:eng")
    assert [(s.metric, s.used, s.limit) for s in team] == [(Metric.COST, 300, 1000)]
    assert bl.scope_status(Scope("acme", "nobody")) == ()
    user = bl.scope_status("org:acme/team:eng/user:carol")  # undeclared user: team default
    assert [(s.limit, s.used) for s in user] == [(5000, 0)]


def test_idempotency_window_comes_from_the_policy(make_limiter, raw_redis):
    bl = make_limiter(BASIC.replace("reservation_ttl_seconds: 60",
                                    "reservation_ttl_seconds: 60\nidempotency_seconds: 120"))
    d = bl.check(ALICE, Usage(input_tokens=1))
    assert bl.commit(d.reservation, Usage(input_tokens=1)).status == "committed"
    marker = KeySpace().reservation_prefix("acme") + d.reservation.id
    assert 100_000 < raw_redis.pttl(marker) <= 120_000
    assert bl.commit(d.reservation, Usage(input_tokens=1)).status == "duplicate"
