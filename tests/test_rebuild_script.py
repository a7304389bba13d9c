"""rebuild.lua on a real redis-server, called directly with hand-made entries (the layout is
in the script's header): what a restore writes into a counter, which thresholds it fires,
which carries it drops, and what it leaves alone."""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.engine.scripts import Registry

pytestmark = pytest.mark.redis

KS = KeySpace("bl")
BASE = KS.org_base("acme")
EPOCH, EVENTS = KS.epoch("acme"), KS.events("acme")
DAY = f"{BASE}:c:o:day:2026-03-10"
TEAM_DAY = f"{BASE}:c:o/t=eng:day:2026-03-10"
LEDGER = f"{BASE}:l:o/a=gpt:2026-03-10"
NOW = 1_773_144_000_000
EXP = NOW + 86_400_000


def entry(key_index: int, metric: str, *, recorded: int = 0, adjusted: int = 0,
          fired: int = 0, drop: bool = False, limit: int = 0, ths: str = "",
          ledgers: tuple[int, ...] = ()) -> list[Any]:
    return [key_index, metric, recorded, adjusted, fired, EXP, 1 if drop else 0, limit, ths,
            len(ledgers), *ledgers]


def rebuild(r: Any, *entries: list[Any], keys: tuple[str, ...] = (DAY, TEAM_DAY, EVENTS,
                                                                    LEDGER)) -> int:
    """KEYS: the epoch, then ``keys`` (indexes 2..); the event stream is index 4."""
    args: list[Any] = [7, NOW, len(entries), 4]
    for e in entries:
        args += e
    return int(r.eval(Registry.default()["rebuild"].source, 1 + len(keys), EPOCH, *keys,
                      *args))


def events(r: Any) -> list[tuple[str, str]]:
    return [(f[b"m"].decode(), f[b"th"].decode()) for _, f in r.xrange(EVENTS)]


def test_a_rebuild_fires_only_the_thresholds_above_those_fired_before(fresh_redis):
    """Recorded 10 of a limit of 10 with thresholds 50 and 100, of which 1 (the 50) fired
    before the loss: the counter gets 10 and only the 100 fires."""
    r = fresh_redis.client()
    assert rebuild(r, entry(2, "n", recorded=10, fired=1, limit=10, ths="50,100")) == 1
    assert r.hgetall(DAY) == {b"u:n": b"10", b"h:n": b"10", b"a:n": b"2"}
    assert events(r) == [("n", "100")]


def test_a_rebuild_fires_every_threshold_a_restored_total_reaches_at_once(fresh_redis):
    r = fresh_redis.client()
    rebuild(r, entry(2, "n", recorded=10, limit=10, ths="50,100"))
    assert r.hget(DAY, "a:n") == b"2"
    assert events(r) == [("n", "50"), ("n", "100")]


def test_a_rebuild_fires_the_threshold_of_a_limit_of_one(fresh_redis):
    r = fresh_redis.client()
    rebuild(r, entry(2, "n", recorded=1, limit=1, ths="100"))
    assert events(r) == [("n", "100")]


def test_a_rebuild_drops_the_carry_only_of_the_entries_marked_to(fresh_redis):
    r = fresh_redis.client()
    for key in (DAY, TEAM_DAY):
        r.hset(key, mapping={"u:n": 1, "h:n": 1, "c:n": 5})
        r.pexpire(key, 50_000)
    rebuild(r, entry(2, "n", recorded=1, drop=True), entry(3, "n", recorded=1))
    assert r.hgetall(DAY) == {b"u:n": b"1", b"h:n": b"1"}
    assert r.hgetall(TEAM_DAY) == {b"u:n": b"1", b"h:n": b"1", b"c:n": b"5"}


def test_a_rebuild_counts_nothing_from_a_ledger_without_the_metric(fresh_redis):
    """A ledger that recorded invocations only (no cost field) adds no cost."""
    r = fresh_redis.client()
    r.hset(LEDGER, "n", 2)
    r.pexpire(LEDGER, 50_000)
    rebuild(r, entry(2, "c", recorded=7, ledgers=(5,)))
    assert r.hgetall(DAY) == {b"u:c": b"7", b"h:c": b"7"}


def test_a_rebuild_with_nothing_to_restore_creates_no_counter(fresh_redis):
    """Nothing recorded, and a credit larger than what was recorded (3 - 5, clamped at
    zero): no counter is raised, none is created, no threshold fires."""
    r = fresh_redis.client()
    assert rebuild(r, entry(2, "n", limit=1, ths="100"),
                   entry(3, "n", recorded=3, adjusted=-5, limit=10, ths="50")) == 0
    assert (r.exists(DAY), r.exists(TEAM_DAY), events(r)) == (0, 0, [])


def test_a_rebuild_leaves_the_expiry_of_a_counter_that_was_there(fresh_redis):
    """A counter Redis still had (raised from 1 to 3) keeps its own expiry; only one the
    rebuild creates gets the entry's."""
    r = fresh_redis.client()
    r.hset(DAY, mapping={"u:n": 1, "h:n": 1})
    r.pexpire(DAY, 50_000)
    assert rebuild(r, entry(2, "n", recorded=3), entry(3, "n", recorded=3)) == 2
    assert r.hgetall(DAY) == {b"u:n": b"3", b"h:n": b"3"}
    assert 0 < r.pttl(DAY) <= 50_000
    assert r.pttl(TEAM_DAY) > 50_000
