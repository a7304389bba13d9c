"""Key expiry: every key budgetlimiter writes expires, but the structural ones (tests/keyttl.py).

The ``backend_url`` fixture checks this after every real-Redis behaviour test; the tests here
build the cases where a key could be (re)created without a TTL: a reservation that outlives
its period's counter (a long reservation TTL on a minute budget with no retention), then
settled or swept after Redis expired the counter. The fake clock cannot make Redis expire a
key, so each test deletes the counter, which is what Redis does when its TTL passes.
"""

from __future__ import annotations

from typing import Any

from budgetlimiter import LeaseConfig, Subject, Usage

from .keyttl import STRUCTURAL_GLOBAL_KEYS, STRUCTURAL_ORG_KEYS, is_structural, keys_without_ttl

SHORT = """
timezone: UTC
retention_seconds: 0
reservation_ttl_seconds: 600
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: minute}
    rates:
      - {metric: invocations, limit: 100, per: minute}
"""

ALICE = Subject("acme", "gpt", user="alice")


def counters(raw_redis: Any) -> list[bytes]:
    return sorted(raw_redis.scan_iter("*:c:*"))


def expire_counters(raw_redis: Any) -> None:
    """What Redis does when the counters' TTL (end of the minute + 0 s retention) passes."""
    keys = counters(raw_redis)
    assert keys and all(raw_redis.pttl(k) > 0 for k in keys)
    raw_redis.delete(*keys)


def test_every_key_of_a_check_commit_and_status_has_a_ttl_when_it_is_not_structural(
        make_limiter, raw_redis):
    bl = make_limiter(SHORT)
    d = bl.check(ALICE)
    bl.commit(d.reservation, Usage())
    bl.status(ALICE)
    bl.record(ALICE, Usage(), request_id="req-1")
    bl.check(ALICE)  # left open
    assert keys_without_ttl(raw_redis) == []
    kinds = {k.split(b"}:")[1].split(b":")[0] for k in raw_redis.scan_iter("*{*}:*")}
    # the test made every kind it means to: counter, rate, reservation, request marker,
    # ledger, and the structural live-reservation set and dirty set
    assert {b"c", b"g", b"r", b"d", b"l", b"rx", b"dirty"} <= kinds


def test_a_release_after_its_counter_expired_leaves_no_key_without_ttl(
        make_limiter, clock, raw_redis):
    bl = make_limiter(SHORT)
    d = bl.check(ALICE)
    expire_counters(raw_redis)
    assert bl.release(d.reservation).status == "released"
    # the refund (held - 1) recreated the old minute's counter: it must expire again
    assert counters(raw_redis) and keys_without_ttl(raw_redis) == []


def test_a_zero_commit_after_its_counter_expired_leaves_no_key_without_ttl(
        make_limiter, clock, raw_redis):
    bl = make_limiter(SHORT)
    d = bl.check(ALICE)
    expire_counters(raw_redis)
    bl.commit(d.reservation, Usage(invocations=0))  # held moves by 0 - 1, used by nothing
    assert counters(raw_redis) and keys_without_ttl(raw_redis) == []


def test_a_sweep_of_a_reservation_whose_counter_expired_leaves_no_key_without_ttl(
        make_limiter, clock, raw_redis):
    bl = make_limiter(SHORT)
    bl.check(ALICE)
    expire_counters(raw_redis)
    clock.advance(601)  # the reservation expired too, ten minutes later
    bl.status(ALICE)  # a status read always sweeps: refunds it on the old minute's counter
    assert keys_without_ttl(raw_redis) == []


def test_the_structural_keys_are_exactly_those_the_layout_documents():
    assert STRUCTURAL_ORG_KEYS == ("rx", "dirty", "ev", "epoch", "pf")
    assert STRUCTURAL_GLOBAL_KEYS == ("dirty-orgs",)
    for key in ("bl:v2:{acme}:rx", "bl:v2:{a%7Bb}:dirty", "bl:v2:{acme}:ev", "p:{x}:epoch",
                "bl:v2:{acme}:pf", "bl:v2:dirty-orgs"):
        assert is_structural(key), key
    for key in ("bl:v2:{acme}:c:o:day:2026-03-10", "bl:v2:{acme}:r:rid",
                "bl:v2:{acme}:rx:more", "bl:v2:{acme}:l:o/a=gpt:2026-03-10",
                "bl:v2:{acme}:g:o:n:second", "bl:v2:{acme}:j:adj", "bl:v2:{acme}:d:req",
                "bl:v2:{acme}:dirty-orgs", "other"):
        assert not is_structural(key), key


LEASED = SHORT.split("    rates:")[0]  # leases never serve subjects with rate limits


def test_a_lease_shrunk_after_its_counter_expired_leaves_no_key_without_ttl(
        make_limiter, clock, raw_redis):
    """A lease of 4 with one call in flight stops admitting when its 30 s are up: the 3
    unused go back (a shrink) onto the minute's counter, which Redis expired meanwhile."""
    bl = make_limiter(LEASED, leases=LeaseConfig(calls=4, seconds=30))
    in_flight = bl.check(ALICE)
    assert in_flight.allowed and in_flight.leased
    expire_counters(raw_redis)
    clock.advance(31)  # still the same minute
    # any call hands due leases back first; this one (an explicit ttl, never leased, and a
    # zero estimate that creates no counter) waits for the shrink on either client
    probe = bl.check(Subject("acme", "gpt", user="probe"), Usage(invocations=0), ttl=5)
    assert probe.allowed
    assert counters(raw_redis) and keys_without_ttl(raw_redis) == []
    bl.release(probe.reservation)
    bl.commit(in_flight.reservation, Usage())
