"""Bad and hostile input: clear typed errors, nothing changed, no key outside the org's tag."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetlimiter import (
    InvalidAmount,
    InvalidId,
    InvalidInput,
    Scope,
    Subject,
    UnknownAgent,
    UnknownScope,
    Usage,
)
from budgetlimiter.engine.keys import KeySpace, encode_id

from .policies import BASIC, DEFAULTS_ONLY

HOSTILE_IDS = [
    "{acme}", "a}b{c", "acme:team", "a/b", "*", "?[x]", "with space", "ünïcødé-团队", "🙂",
    "%7B", "x" * 256, "o/t=eng", "a\u200bb", "'; FLUSHALL; --",
]


def keys_snapshot(redis) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for k in redis.keys("*"):
        kind = redis.type(k)
        if kind == b"hash":
            out[k] = redis.hgetall(k)
        elif kind == b"string":
            out[k] = redis.get(k)
        else:
            out[k] = kind
    return out


@pytest.mark.parametrize("amount", [-1, float("nan"), float("inf"), 2**63, 1.5, "12", None])
def test_bad_token_amounts_are_refused(amount):
    with pytest.raises(InvalidAmount):
        Usage(input_tokens=amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("cost", [Decimal("-0.01"), Decimal("NaN"), Decimal("Infinity"),
                                  0.1, "abc", Decimal("1e30")])
def test_bad_costs_are_refused(cost):
    with pytest.raises(InvalidAmount):
        Usage(cost=cost)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "x" * 257, "x" * 1_000_000, "a\nb", "a\x00b", 5, None,
                                 "\ud800"])
def test_bad_ids_are_refused(bad):
    with pytest.raises(InvalidId):
        Subject(bad, "gpt")  # type: ignore[arg-type]
    if bad is not None:  # None means "no user"
        with pytest.raises(InvalidId):
            Subject("acme", "gpt", user=bad)  # type: ignore[arg-type]


def test_bad_input_changes_nothing(make_limiter, raw_redis):
    bl = make_limiter(BASIC)
    alice = Subject("acme", "gpt", team="eng", user="alice")
    bl.check(alice, Usage(input_tokens=10))
    before = keys_snapshot(raw_redis)
    with pytest.raises(UnknownAgent):
        bl.check(Subject("acme", "no-such-model", team="eng"), Usage(input_tokens=1))
    with pytest.raises(InvalidInput):
        bl.check(alice, Usage(), ttl=-5)
    with pytest.raises(InvalidInput):
        bl.check(alice, {"input_tokens": 5})  # type: ignore[arg-type]
    with pytest.raises(InvalidId):
        bl.check(alice, Usage(), reservation_id="")
    with pytest.raises(InvalidId):
        bl.record(alice, Usage(), request_id="x" * 300)
    with pytest.raises(InvalidInput):
        bl.commit("not-a-reservation", Usage())  # type: ignore[arg-type]
    assert keys_snapshot(raw_redis) == before


@pytest.mark.parametrize("text", ["", "acme", "team:eng", "org:acme/org:b", "org:a/user:u/team:t",
                                  "org:a/planet:x", "org:"])
def test_bad_scope_strings(text):
    with pytest.raises((UnknownScope, InvalidId)):
        Scope.parse(text)


@pytest.mark.parametrize("org", HOSTILE_IDS)
def test_hostile_ids_stay_inside_their_org_tag(make_limiter, raw_redis, org):
    bl = make_limiter(DEFAULTS_ONLY)
    subject = Subject(org, "gpt", team=org, user=org)
    d = bl.check(subject, Usage(input_tokens=5))
    bl.commit(d.reservation, Usage(input_tokens=5))
    base = KeySpace().org_base(org).encode()
    keys = [k for k in raw_redis.keys("*") if k != KeySpace().dirty_orgs.encode()]
    assert len(keys) >= 8, keys
    for key in keys:
        assert key.startswith(base + b":")
        assert key.count(b"{") == 1 and key.count(b"}") == 1


ids = st.text(min_size=1, max_size=40).filter(
    lambda s: all(not (0xD800 <= ord(c) <= 0xDFFF) and c.isprintable() for c in s))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.tuples(ids, st.none() | ids, st.none() | ids, ids),
       b=st.tuples(ids, st.none() | ids, st.none() | ids, ids))
def test_distinct_scopes_never_share_a_key(a, b):
    ks = KeySpace()
    sa, sb = Scope(a[0], a[1], a[2], a[3]), Scope(b[0], b[1], b[2], b[3])
    from budgetlimiter.engine.keys import scope_path

    ka = ks.org_base(sa.org) + scope_path(sa)
    kb = ks.org_base(sb.org) + scope_path(sb)
    assert (ka == kb) == (sa == sb)
    assert Scope.parse(str(sa)) == sa
    assert "{" not in encode_id(a[0]) and "}" not in encode_id(a[0]) and ":" not in encode_id(a[0])
