"""Property-based tests (hypothesis): ids, amounts, policies, reply parsing, and a model-based
test of check / commit / release / record on ``memory://`` against a plain Python model."""

from __future__ import annotations

import math
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st

from budgetlimiter import (
    BudgetLimiter,
    InvalidAmount,
    InvalidId,
    PolicyError,
    ReservationNotFound,
    ReservationSettled,
    Scope,
    Subject,
    Usage,
    parse_policy,
)
from budgetlimiter.engine.keys import KeySpace, encode_id
from budgetlimiter.engine.planner import Core
from budgetlimiter.engine.settle_plan import SettlePlanner
from budgetlimiter.policy import policy_from_dict
from budgetlimiter.policy.periods import PeriodKind, window_at
from budgetlimiter.usage import MAX_AMOUNT, Metric

from .conftest import FakeClock

pytestmark = pytest.mark.memory

FAST = settings(max_examples=150, deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------------- ids

#: any code point, surrogates and control characters included, with key syntax overweighted
_syntax = st.sampled_from([*"{}:/=%*?[]\\ .~@+-", "\u2028", "\ufeff", "\U0001F600", "é", "ß"])
_printable = st.one_of(st.characters(codec=None, exclude_categories=["Cc", "Cs"]), _syntax)
_any_char = st.one_of(_printable, st.characters(categories=["Cs", "Cc"]))


@st.composite
def ids(draw: st.DrawFn) -> str:
    """Text of 0 .. ~1 MB: mostly printable (keys get built), sometimes with control
    characters or lone surrogates, sometimes repeated to around 256 characters or ~1 MB."""
    chars = _printable if draw(st.integers(0, 3)) else _any_char
    text = draw(st.text(chars, max_size=40) | st.sampled_from(["%7B", "%25", "a%2Fb", "o/t=x"]))
    grow = draw(st.integers(0, 9)) if text else 0
    if grow == 1:
        target = draw(st.integers(250, 260))
        text = (text * (target // len(text) + 1))[:target]
    elif grow == 2:
        text = text * draw(st.integers(1, 1_000_000 // len(text)))
    return text


def redis_hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (first ``{...}`` with non-empty content)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


POLICY_ALL_LEVELS = parse_policy("""
timezone: Europe/Berlin
default_pricing: {input_per_million: "1", output_per_million: "2"}
defaults:
  org:
    limits: [{metric: cost, amount: "10", period: month, rollover: accumulate}]
    agents: {gpt: {limits: [{metric: invocations, amount: 100, period: day}]}}
  team:
    limits: [{metric: total_tokens, amount: 1000, period: week}]
  user:
    limits: [{metric: invocations, amount: 10, period: hour}]
    rates: [{metric: requests, limit: 5, per: second}]
""")
NOW_MS = 1_773_144_000_000  # 2026-03-10T12:00Z


def _try_subject(org: str, agent: str, team: str | None, user: str | None) -> Subject | None:
    try:
        subject = Subject(org, agent, team=team, user=user)
    except InvalidId as exc:
        assert str(exc)
        event("refused with InvalidId")
        return None
    event("accepted")
    return subject


@FAST
@given(org=ids(), team=st.none() | ids(), user=st.none() | ids(),
       agent=st.sampled_from(["gpt", "x"]) | ids())
def test_any_id_is_refused_cleanly_or_stays_inside_its_org(org, team, user, agent):
    subject = _try_subject(org, agent, team, user)
    if subject is None:
        return
    for value in (org, agent, team, user):
        if value is not None:
            assert 0 < len(value) <= 256
    ks = KeySpace()
    base = ks.org_base(org)
    tag = encode_id(org)
    day = window_at(PeriodKind.DAY, NOW_MS, POLICY_ALL_LEVELS.timezone_for(org), 0)
    keys = [ks.reservation(org, "r1"), ks.request(org, "q"), ks.reservations_by_expiry(org),
            ks.dirty(org), ks.events(org), ks.epoch(org), ks.pending_flush(org)]
    for scope in subject.scopes():
        assert Scope.parse(str(scope)) == scope  # the text form round-trips
        counter = ks.counter(scope, day)
        assert ks.parse_counter(counter).scope == scope
        assert ks.parse_counter(counter).period_id == day.id
        keys += [counter, ks.rate(scope, Metric.TOTAL_TOKENS, "second")]
    ledger = ks.ledger(subject, day.id)
    assert ks.parse_ledger(ledger).subject == subject
    keys.append(ledger)
    # every key of a whole decision: check, then commit of its reservation
    core = Core(POLICY_ALL_LEVELS, ks)
    call = core.plan_check(subject, Usage(input_tokens=1), NOW_MS)
    keys += call.keys
    assert call.parse is not None
    reservation = call.parse([1, 0, 0] + [0, 0, 0] * call.args[6] + [0] * call.args[7])
    assert reservation.allowed and reservation.reservation is not None
    settle = SettlePlanner(core).plan_commit(reservation.reservation, Usage(input_tokens=1), NOW_MS)
    keys += [k for k in settle.keys if k != ks.dirty_orgs]
    for key in keys:
        assert key.startswith(base + ":"), key[:200]
        assert redis_hash_tag(key) == tag  # one Cluster slot per org, whatever the id
        assert ks.org_of(key) == org
        assert not any(c in key for c in " \r\n\x00")


@FAST
@given(a=ids(), b=ids())
def test_different_ids_never_share_a_key(a, b):
    assume(a != b)
    sa, sb = _try_subject(a, "gpt", "t", None), _try_subject(b, "gpt", "t", None)
    if sa is None or sb is None:
        return
    ks = KeySpace()
    day = window_at(PeriodKind.DAY, NOW_MS, POLICY_ALL_LEVELS.timezone_for(a), 0)
    keys_a = {ks.counter(s, day) for s in sa.scopes()} | {ks.org_base(a)}
    keys_b = {ks.counter(s, day) for s in sb.scopes()} | {ks.org_base(b)}
    assert not keys_a & keys_b
    # and as team ids inside one org
    ta, tb = _try_subject("o", "gpt", a, "u"), _try_subject("o", "gpt", b, "u")
    assert ta is not None and tb is not None
    assert not {ks.counter(s, day) for s in ta.scopes()[2:]} & \
        {ks.counter(s, day) for s in tb.scopes()[2:]}


# ------------------------------------------------------------------------------- amounts

_decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-10**20, max_value=10**20, places=0),
    st.sampled_from([Decimal("NaN"), Decimal("sNaN"), Decimal("-0"), Decimal("1E+5"),
                     Decimal("9007199254740991"), Decimal("9007199254740992"),
                     Decimal("1E-1000000")]),
)
_amounts = st.one_of(
    st.integers(),
    st.integers(min_value=2**53 - 5, max_value=2**53 + 5),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(max_value=0, min_value=-(2**70)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 1e300, 2.0**53, 2.0**53 + 2]),
    _decimals,
    st.text(max_size=20),
    st.sampled_from(["1", "0.5", "1e3", "NaN", "-1", "", " 2 ", "0x10", "1_000"]),
    st.booleans(), st.none(), st.just(b"1"), st.just([1]),
)


def _exact_count(value: object) -> int | None:
    """What a valid token/invocation count must come out as (None: must be refused)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        n = int(value)
    elif isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 16:
            return None
        if value != value.to_integral_value():
            return None
        n = int(value)
    else:
        return None
    return n if 0 <= n <= MAX_AMOUNT else None


@FAST
@given(value=_amounts, field=st.sampled_from(["input_tokens", "output_tokens", "invocations"]))
def test_counts_are_exact_integers_or_invalid_amount(value, field):
    expected = _exact_count(value)
    try:
        usage = Usage(**{field: value})
    except InvalidAmount as exc:
        assert expected is None, f"{value!r} refused: {exc}"
        return
    got = getattr(usage, field)
    assert type(got) is int and got == expected


def _exact_cost(value: object) -> Decimal | None:
    if isinstance(value, (bool, float)) or value is None:
        return None
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not dec.is_finite() or dec < 0:
        return None
    if dec > Decimal(MAX_AMOUNT) / 10**6:
        return None
    return dec


@FAST
@given(value=_amounts)
def test_costs_are_exact_decimals_or_invalid_amount(value):
    assume(value is not None)  # None means "price it from the policy"
    expected = _exact_cost(value)
    try:
        usage = Usage(cost=value)
    except InvalidAmount as exc:
        assert expected is None, f"{value!r} refused: {exc}"
        return
    assert expected is not None, f"{value!r} accepted"
    assert usage.cost == expected
    micros = Core(POLICY_ALL_LEVELS).amounts(Subject("o", "gpt"), usage).cost
    assert type(micros) is int and 0 <= micros <= MAX_AMOUNT
    # rounded up to a whole micro-dollar, never down
    assert Decimal(micros) >= expected * 10**6 > Decimal(micros) - 1


def test_huge_integral_decimal_count_is_invalid_amount():
    with pytest.raises(InvalidAmount):
        Usage(input_tokens=Decimal("1E+30"))


def test_an_absurd_cost_is_refused_before_it_is_expanded():
    # expanding 10**999999999 to an integer would take hours and gigabytes: a refusal that
    # does not look at the exponent first fails by the test's timeout, no clock needed
    with pytest.raises(InvalidAmount):
        Usage(cost=Decimal("1E+999999999"))


# ------------------------------------------------------------------------------ policies

_metric = st.sampled_from(["invocations", "input_tokens", "output_tokens", "total_tokens",
                           "cost"])
_period = st.sampled_from(["minute", "hour", "day", "week", "month"])
_good_amount = st.one_of(st.integers(0, 10**6), st.sampled_from(["0", "5", "1000"]))
_limit = st.fixed_dictionaries(
    {"metric": _metric, "amount": _good_amount, "period": _period},
    optional={"mode": st.sampled_from(["hard", "soft"]),
              "thresholds": st.lists(st.integers(1, 100), max_size=4, unique=True).map(sorted)},
)


def _limit_key(d: dict[str, Any]) -> tuple[str, str]:
    return d["metric"], d["period"]


_rate = st.fixed_dictionaries({
    "metric": st.sampled_from(["requests", "input_tokens", "total_tokens"]),
    "limit": st.integers(1, 1000), "per": st.sampled_from(["second", "minute", "hour"]),
})
_node_id = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
                   max_size=6)


@st.composite
def valid_policies(draw: st.DrawFn) -> dict[str, Any]:
    team = st.fixed_dictionaries({}, optional={
        "limits": st.lists(_limit, max_size=2, unique_by=_limit_key),
        "rates": st.lists(_rate, max_size=1)})
    org = st.fixed_dictionaries({}, optional={
        "limits": st.lists(_limit, max_size=2, unique_by=_limit_key),
        "teams": st.dictionaries(_node_id, team, max_size=2),
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
    })
    return {
        "timezone": draw(st.sampled_from(["UTC", "America/New_York"])),
        "pricing": {"gpt": {"input_per_million": "1", "output_per_million": "2"}},
        "orgs": draw(st.dictionaries(_node_id, org, min_size=1, max_size=2)),
    }


#: (a mutation of one field, the path it must be reported at)
_BAD = st.sampled_from([
    ("amount", "-5"), ("amount", "NaN"), ("amount", "lots"), ("amount", 10**30),
    ("metric", "bogus"), ("period", "year"), ("mode", "maybe"), ("rollover_cap", "5"),
    ("unknown_field", 1),
])


@FAST
@given(policy=valid_policies(), data=st.data())
def test_policies_validate_or_name_the_bad_path(policy, data):
    assert policy_from_dict(policy) is not None  # the generator makes valid ones
    places = [(org, None, i) for org, spec in policy["orgs"].items()
              for i in range(len(spec.get("limits", [])))]
    places += [(org, team, i) for org, spec in policy["orgs"].items()
               for team, tspec in spec.get("teams", {}).items()
               for i in range(len(tspec.get("limits", [])))]
    if not places:
        return
    org, team, i = data.draw(st.sampled_from(places))
    field, bad = data.draw(_BAD)
    node = policy["orgs"][org] if team is None else policy["orgs"][org]["teams"][team]
    node["limits"][i][field] = bad
    path = f"orgs.{org}" + (f".teams.{team}" if team else "") + f".limits[{i}]"
    with pytest.raises(PolicyError) as info:
        policy_from_dict(policy)
    err = info.value
    assert f"{path}.{field}" in str(err), str(err)
    assert err.path is not None and err.path.startswith(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_keys = st.sampled_from(["timezone", "orgs", "pricing", "defaults", "limits", "teams",
                         "users", "agents", "metric", "amount", "period", "rates", "strict",
                         "outage", "week_start", "default_pricing", "per", "limit"])
_shaped = st.recursive(
    st.none() | st.integers(-5, 10**6) | st.text(max_size=6) | _metric | _period,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys | _node_id, inner,
                                                                max_size=4),
    max_leaves=20,
)


@FAST
@given(data=st.dictionaries(_keys | st.text(max_size=5), _shaped | _json, max_size=5))
def test_random_policy_dicts_give_a_policy_or_a_policy_error(data):
    try:
        policy = policy_from_dict(data)
    except PolicyError as err:
        text = str(err)
        assert text.startswith("<dict>") or "errors in policy <dict>" in text
        if err.path is not None:
            assert err.path in text
        else:
            assert "(top level)" in text or "<dict>:" in text
        return
    assert policy is not None


# -------------------------------------------------------------------------- reply parsing

PARSE_POLICY = parse_policy("""
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "10", period: month, rollover: accumulate}]
    rates: [{metric: requests, limit: 10, per: second, burst: 20}]
    teams:
      eng:
        limits:
          - {metric: total_tokens, amount: 1000, period: day}
          - {metric: invocations, amount: 5, period: hour, mode: soft}
        rates: [{metric: total_tokens, limit: 600, per: minute}]
""")
PARSE_SUBJECT = Subject("acme", "gpt", team="eng", user="u")
_count = st.integers(0, 2**53 - 1)


@FAST
@given(data=st.data(), dry=st.booleans())
def test_check_replies_of_the_right_shape_always_parse(data, dry):
    core = Core(PARSE_POLICY)
    call = core.plan_check(PARSE_SUBJECT, Usage(input_tokens=5), NOW_MS, dry_run=dry)
    nb, nr = int(call.args[6]), int(call.args[7])
    allowed = data.draw(st.sampled_from([0, 1]))
    blocker = 0 if allowed else data.draw(st.integers(0, nb + nr))
    reply = [allowed, blocker, data.draw(_count)]
    reply += data.draw(st.lists(_count, min_size=3 * nb + nr, max_size=3 * nb + nr))
    as_bytes = data.draw(st.booleans())
    d = call.parse([str(v).encode() for v in reply] if as_bytes else reply)
    assert d.allowed is bool(allowed)
    assert len(d.limits) == nb + nr
    assert (d.reservation is not None) == (bool(allowed) and not dry)
    if blocker:
        assert d.blocked_by is d.limits[blocker - 1]
        assert d.blocked_by.state == "blocked"
        assert d.retry_after is not None and d.retry_after >= 0
        assert d.reason.endswith("_exceeded")
    else:
        assert d.blocked_by is None
    for x in d.limits:
        assert x.remaining >= 0 and x.percent >= 0
        if x.kind == "rate":  # taken is measured against the bucket, not the rate
            assert x.burst is not None and 0 <= x.taken <= x.burst
        if allowed and not dry:  # an admitted check reports taken only, on either path
            assert x.used is None and x.reserved is None
        else:
            assert x.used is not None and x.reserved is not None


@FAST
@given(data=st.data())
def test_settle_replies_of_the_right_shape_always_parse(data):
    core = Core(PARSE_POLICY)
    ks = core.keys
    code = data.draw(st.sampled_from([-1, 1, 2, 3]))
    n = data.draw(st.integers(0, 4))
    rest: list[Any] = []
    for _ in range(n):
        scope = data.draw(st.sampled_from(PARSE_SUBJECT.scopes()))
        kind = data.draw(st.sampled_from(list(PeriodKind)))
        w = window_at(kind, NOW_MS, PARSE_POLICY.timezone_for("acme"), 0)
        metric = data.draw(st.sampled_from(list(Metric)))
        rest += [ks.counter(scope, w).encode(), metric.code.encode(),
                 data.draw(st.integers(1, 200)), data.draw(_count), data.draw(_count)]
    reply = [code, data.draw(st.sampled_from([0, 1])), data.draw(st.sampled_from([0, 1])),
             *rest]
    actual = core.amounts(PARSE_SUBJECT, Usage(input_tokens=3))
    if code == -1:
        with pytest.raises(ReservationNotFound):
            SettlePlanner(core).parse("rid", reply, actual, "committed", "committed")
        return
    r = SettlePlanner(core).parse("rid", reply, actual, "committed", "committed")
    assert r.status == {1: "committed", 2: "duplicate", 3: "late"}[code]
    assert len(r.thresholds) == n
    assert (r.actual is None) == (code == 2)
    for t in r.thresholds:
        assert t.scope in PARSE_SUBJECT.scopes()


# ------------------------------------------------------------------ model-based hot path

MODEL_POLICY = parse_policy("""
timezone: UTC
reservation_ttl_seconds: 3600
pricing: {gpt: {input_per_million: "1", output_per_million: "1"}}
orgs:
  acme:
    limits: [{metric: total_tokens, amount: 300, period: day}]
    teams:
      a: {limits: [{metric: total_tokens, amount: 150, period: day}]}
      b: {limits: [{metric: total_tokens, amount: 200, period: day}]}
    defaults:
      user:
        limits: [{metric: total_tokens, amount: 90, period: day}]
""")
LIMITS = {"org:acme": 300, "org:acme/team:a": 150, "org:acme/team:b": 200}
USER_LIMIT = 90
SUBJECTS = [Subject("acme", "gpt", team=t, user=u) for t in ("a", "b") for u in ("x", "y")]


def _limited_scopes(s: Subject) -> list[tuple[str, int]]:
    return [("org:acme", 300), (f"org:acme/team:{s.team}", LIMITS[f"org:acme/team:{s.team}"]),
            (f"org:acme/team:{s.team}/user:{s.user}", USER_LIMIT)]


_check = st.tuples(st.just("check"), st.integers(0, 3), st.integers(0, 70))
_op = st.one_of(
    _check, _check,
    st.tuples(st.just("commit"), st.integers(0, 50), st.integers(0, 80)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("record"), st.integers(0, 3), st.integers(0, 60)),
    st.tuples(st.just("recommit"), st.integers(0, 50), st.integers(0, 80)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=10, max_size=50))
def test_hot_path_matches_a_simple_model(ops):
    clock = FakeClock()
    bl = BudgetLimiter(MODEL_POLICY, f"memory://{uuid.uuid4().hex}", clock=clock, timeout=2)
    used: dict[str, int] = {}
    reserved: dict[str, int] = {}
    open_: list[tuple[Any, int]] = []  # (reservation, estimate) not yet settled
    settled: list[Any] = []
    try:
        for kind, a, b in ops:
            if kind == "check":
                s = SUBJECTS[a]
                scopes = _limited_scopes(s)
                fits = [b + used.get(k, 0) + reserved.get(k, 0) <= lim
                        and not (b == 0 and used.get(k, 0) + reserved.get(k, 0) >= lim)
                        for k, lim in scopes]
                d = bl.check(s, Usage(input_tokens=b, invocations=1))
                assert d.allowed == all(fits), (d, used, reserved)
                if d.allowed:
                    assert d.reservation is not None
                    for k, _ in scopes:
                        reserved[k] = reserved.get(k, 0) + b
                    open_.append((d.reservation, b))
                else:
                    assert d.blocked_by is not None
                    failing = [k for (k, _), ok in zip(scopes, fits, strict=True) if not ok]
                    if d.cached:  # the deny cache answers with the exhausted budget it saw
                        assert str(d.blocked_by.scope) in failing
                    else:  # the first limit (outermost first) that does not fit
                        assert str(d.blocked_by.scope) == failing[0]
                    event("denied" + (" (deny cache)" if d.cached else ""))
            elif kind in ("commit", "release") and open_:
                res, est = open_.pop(a % len(open_))
                s = res.subject
                for k, _ in _limited_scopes(s):
                    reserved[k] -= est
                if kind == "commit":
                    r = bl.commit(res, Usage(input_tokens=b, invocations=1))
                    assert r.status == "committed"
                    assert r.overshoot == (b > est)
                    for k, _ in _limited_scopes(s):
                        used[k] = used.get(k, 0) + b
                else:
                    assert bl.release(res).status == "released"
                settled.append((res, kind))
            elif kind == "recommit" and settled:
                res, how = settled[a % len(settled)]  # idempotent: nothing changes
                # the same operation again is a duplicate; the other one is refused
                again = Usage(input_tokens=b, invocations=1)
                if how == "commit":
                    assert bl.commit(res, again).status == "duplicate"
                    with pytest.raises(ReservationSettled):
                        bl.release(res)
                else:
                    assert bl.release(res).status == "duplicate"
                    with pytest.raises(ReservationSettled):
                        bl.commit(res, again)
            elif kind == "record":
                s = SUBJECTS[a]
                r = bl.record(s, Usage(input_tokens=b), request_id=f"req-{len(settled)}-{b}")
                if r.status == "duplicate":
                    continue
                assert r.status == "recorded"
                for k, _ in _limited_scopes(s):
                    used[k] = used.get(k, 0) + b
            clock.advance(1)
        for s in SUBJECTS:
            for st_ in bl.status(s):
                k = str(st_.scope)
                assert st_.used == used.get(k, 0), (k, st_, used)
                assert st_.reserved == reserved.get(k, 0), (k, st_, reserved)
    finally:
        bl.close()
