"""What a limit reports (issue #16), on every backend and both clients: a refusal says what
did not fit (``requested``), a rate limit reports its rate and its burst as two fields, an
admitted check has one shape whichever path the check script took, and a check without an
estimate counts one invocation."""

from __future__ import annotations

from decimal import Decimal

from budgetlimiter import Metric, Subject, Usage

from .policies import BASIC, BUDGETS_AND_RATE

ALICE = Subject("acme", "gpt", team="eng", user="alice")
TEAM = "org:acme/team:eng"

BURSTY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    rates: [{metric: requests, limit: 20, per: second, burst: 40}]
"""
ROLLING = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "0.001", period: day, rollover: accumulate}]
"""
INVOCATIONS = """
timezone: UTC
pricing: {gpt: {per_invocation: "0.01"}}
orgs:
  acme:
    limits: [{metric: invocations, amount: 2, period: day}]
"""


def team_limit(limits, metric: Metric = Metric.COST):
    return next(s for s in limits if str(s.scope) == TEAM and s.metric is metric)


def test_a_refusal_says_what_it_needed(make_limiter):
    bl = make_limiter(BASIC)
    bl.commit(bl.check(ALICE, Usage(input_tokens=200)).reservation, Usage(input_tokens=200))
    refused = bl.check(ALICE, Usage(input_tokens=700, output_tokens=100))  # 900 micro-USD
    b = refused.blocked_by
    assert not refused.allowed and b is not None and str(b.scope) == TEAM
    assert (b.limit, b.used, b.reserved, b.requested) == (1000, 200, 0, 900)
    assert b.requested > b.limit - b.used - b.reserved  # what did not fit
    doc = b.to_dict()
    assert (doc["limit"], doc["used"], doc["reserved"], doc["requested"], doc["burst"]) == (
        "0.001000", "0.000200", "0.000000", "0.000900", None)
    assert "requested 0.000900" in str(refused)
    # every limit of the decision says what the request asked of its metric
    assert {s.requested for s in refused.limits if s.metric is Metric.COST} == {900}
    # a status read asked for nothing
    assert {s.requested for s in bl.scope_status(TEAM)} == {0}


def test_a_rate_refusal_says_how_many_units_it_needed(make_limiter):
    bl = make_limiter(BURSTY)
    s = Subject("acme", "gpt")
    big = bl.check(s, Usage(invocations=41))
    assert not big.allowed and big.blocked_by is not None and big.blocked_by.kind == "rate"
    assert (big.blocked_by.requested, big.blocked_by.limit, big.blocked_by.burst) == (41, 20, 40)
    assert str(big) == ("denied org:acme/agent:gpt: rate invocations per second of org:acme "
                        "(limit 20 per second, burst 40, used 0, reserved 0, requested 41)")


def test_a_rate_limit_reports_its_rate_and_its_burst(make_limiter):
    bl = make_limiter(BURSTY)
    s = Subject("acme", "gpt")
    for _ in range(40):  # the bucket: 40 at once, not 20
        assert bl.check(s, Usage()).allowed
    refused = bl.check(s, Usage())
    rate = refused.blocked_by
    assert rate is not None and rate.kind == "rate" and rate.period == "per second"
    assert (rate.limit, rate.burst, rate.taken, rate.remaining) == (40 // 2, 40, 40, 0)
    assert rate.percent == 100.0
    (status,) = bl.scope_status("org:acme")
    assert (status.limit, status.burst, status.taken, status.used, status.reserved) == (
        20, 40, 40, 40, 0)
    assert status.state == "blocked"  # a full bucket: the next request would wait
    doc = status.to_dict()
    assert (doc["limit"], doc["burst"], doc["remaining"]) == (20, 40, 0)
    # the effective policy says the same: limit 20 per second, burst 40
    (rates,) = [sc["rates"] for sc in bl.policy.resolve(s).to_dict()["scopes"]]
    assert [(r["limit"], r["burst"], r["per"]) for r in rates] == [(20, 40, "second")]


def test_budgets_have_no_burst(make_limiter):
    bl = make_limiter(BASIC)
    for s in bl.status(ALICE):
        assert s.burst is None and s.capacity == s.limit


# ---------------------------------------------------------------- one shape when admitted

def test_admitted_check_on_the_fast_path_reports_taken_only(make_limiter):
    bl = make_limiter(BUDGETS_AND_RATE)
    d = bl.check(Subject("acme", "gpt"), Usage(input_tokens=10))
    assert d.allowed and d.limits
    for s in d.limits:  # budgets and the rate limit alike
        assert s.used is None and s.reserved is None, s
        assert s.to_dict()["used"] is None and s.to_dict()["reserved"] is None
    rate = next(s for s in d.limits if s.kind == "rate")
    assert (rate.taken, rate.limit, rate.burst, rate.requested) == (1, 2, 2, 1)


def test_admitted_check_on_the_full_path_carry_reports_taken_only(make_limiter, raw_redis):
    """The first check of a period with rollover computes the carry: the script's full path,
    which reads used and held apart. The answer keeps the admitted shape."""
    bl = make_limiter(ROLLING)
    s = Subject("acme", "gpt", team="eng")
    d = bl.check(s, Usage(input_tokens=300))
    assert d.allowed
    (org,) = d.limits
    assert (org.taken, org.used, org.reserved, org.requested) == (300, None, None, 300)
    # the full path ran: only it stores the carry field
    fields = {f for k in raw_redis.scan_iter("*:c:*") for f in raw_redis.hgetall(k)}
    assert b"c:c" in fields
    # a refusal on the same budget splits used and reserved
    refused = bl.check(s, Usage(input_tokens=800))
    assert refused.blocked_by is not None
    assert (refused.blocked_by.used, refused.blocked_by.reserved) == (0, 300)


def test_admitted_check_after_an_expired_reservation_has_one_shape(make_limiter, clock):
    """An expired reservation still in ``held`` makes the fast path refuse; the full path
    sweeps it and admits. With the sampled sweep the fast path admits at once. Both answers
    have the admitted shape."""
    bl = make_limiter(BASIC)
    for swept in (False, True):
        bl.check(ALICE, Usage(input_tokens=800), ttl=30)  # expires unused
        clock.advance(31)
        bl.engine.sweep_sampler = lambda swept=swept: swept  # the sampled sweep, or not
        d = bl.check(ALICE, Usage(input_tokens=800))
        assert d.allowed, swept
        team = team_limit(d.limits)
        assert (team.taken, team.used, team.reserved) == (800, None, None), swept
        bl.release(d.reservation)
    # a dry run and status reads split them
    dry = bl.check(ALICE, Usage(input_tokens=10), dry_run=True)
    assert dry.allowed and (team_limit(dry.limits).used, team_limit(dry.limits).reserved) == (
        0, 0)
    assert (team_limit(bl.status(ALICE)).used, team_limit(bl.status(ALICE)).reserved) == (0, 0)


# ---------------------------------------------------------------- no estimate

def test_a_check_without_an_estimate_counts_one_invocation(make_limiter):
    bl = make_limiter(INVOCATIONS)
    s = Subject("acme", "gpt")
    first = bl.check(s)
    assert first.allowed and first.reservation is not None
    assert first.reservation.estimate.invocations == 1
    assert first.reservation.estimate.cost_usd == Decimal("0.01")  # the per-invocation price
    assert bl.check(s, Usage()).allowed  # the same: Usage() is one invocation, no tokens
    third = bl.check(s)
    assert not third.allowed and third.blocked_by is not None
    assert (third.blocked_by.requested, third.blocked_by.reserved) == (1, 2)
    # an explicit zero invocations asks for nothing of this budget, but an exhausted budget
    # still refuses it
    assert not bl.check(s, Usage(invocations=0)).allowed


def test_a_cached_refusal_carries_the_asking_requests_amount(make_limiter):
    bl = make_limiter(BASIC)
    bl.record(ALICE, Usage(input_tokens=1000))  # the team's day budget is used up
    assert not bl.check(ALICE, Usage(input_tokens=5)).allowed
    cached = bl.check(ALICE, Usage(input_tokens=7))
    assert cached.cached and cached.blocked_by is not None
    assert cached.blocked_by.requested == 7
