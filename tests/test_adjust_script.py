"""adjust.lua on a real redis-server, called directly (layout in the script's header): what
one operator adjustment writes to a counter and to its marker."""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.engine.scripts import Registry

pytestmark = pytest.mark.redis

BASE = KeySpace("bl").org_base("acme")
MARKER, COUNTER = f"{BASE}:j:adj1", f"{BASE}:c:o:day:2026-03-10"
NOW = 1_773_144_000_000
DAY_END = NOW + 12 * 3_600_000


def adjust(r: Any, requested: int) -> list[bytes]:
    return list(r.eval(Registry.default()["adjust"].source, 2, MARKER, COUNTER,
                       NOW, "n", requested, f"o n {requested}", 600_000, DAY_END))


def test_a_debit_of_one_unit_creates_the_counter_with_its_expiry_and_a_marker(fresh_redis):
    r = fresh_redis.client()
    assert adjust(r, 1) == [b"applied", b"1", str(NOW).encode()]
    assert r.hgetall(COUNTER) == {b"u:n": b"1", b"h:n": b"1"}
    assert DAY_END - NOW - 60_000 < r.pttl(COUNTER) <= DAY_END - NOW
    assert r.hgetall(MARKER) == {b"applied": b"1", b"at": str(NOW).encode(),
                                 b"op": b"o n 1"}
    assert 540_000 < r.pttl(MARKER) <= 600_000  # the marker TTL given


def test_a_credit_of_one_unit_moves_used_and_held_and_keeps_the_expiry(fresh_redis):
    r = fresh_redis.client()
    r.hset(COUNTER, mapping={"u:n": 3, "h:n": 5})
    r.pexpire(COUNTER, 50_000)
    assert adjust(r, -1)[:2] == [b"applied", b"-1"]
    assert r.hgetall(COUNTER) == {b"u:n": b"2", b"h:n": b"4"}
    assert 0 < r.pttl(COUNTER) <= 50_000


def test_a_credit_with_nothing_used_applies_nothing_and_creates_no_counter(fresh_redis):
    r = fresh_redis.client()
    assert adjust(r, -1)[:2] == [b"applied", b"0"]
    assert r.exists(COUNTER) == 0
