"""Keys live exactly as long as they should: a counter until its period's end plus the
retention, and at least one second (a counter created in the last second of its period, with
no retention, gets exactly 1000 ms: never less, Redis would drop it before the reply is read,
and never more); a ledger until its day's end plus the retention; a rate key until its next
arrival time plus a second.

Shown on memory:// with Redis's clock fixed (tests/frozen_redis.py), where a TTL can be read
to the millisecond; on a real redis-server it shrinks while the test reads it."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from budgetlimiter import BudgetLimiter, LeaseConfig, Subject, Usage, parse_policy
from budgetlimiter.backends import connect_sync
from budgetlimiter.usage import Amounts

from .frozen_redis import freeze_redis_time

NO_RETENTION = """
timezone: UTC
retention_seconds: 0
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {limits: [{metric: invocations, amount: 10, period: day}]}}
"""
ALICE = Subject("acme", "m", user="alice")
MIDNIGHT_MS = int(datetime(2026, 3, 11, tzinfo=timezone.utc).timestamp() * 1000)


@pytest.mark.parametrize(("before_end_ms", "ttl_ms"),
                         [(999, 1000), (1, 1000), (1000, 1000), (1001, 1001), (60_000, 60_000)])
def test_a_counter_lives_to_its_period_end_and_at_least_one_second(
        monkeypatch, before_end_ms, ttl_ms):
    now_ms = MIDNIGHT_MS - before_end_ms
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(NO_RETENTION), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        counters = list(raw.scan_iter(match=bl.keys.counter_pattern("acme")))
        assert len(counters) == 1
        assert raw.pttl(counters[0]) == ttl_ms
    finally:
        raw.close()
        bl.close()


RETAINED = NO_RETENTION.replace("retention_seconds: 0", "retention_seconds: 3600")


@pytest.mark.parametrize("how", ["record", "commit"])
def test_a_ledger_lives_to_its_day_end_plus_retention(monkeypatch, how):
    # 12:00 UTC: the day ends in 12 h, plus 1 h of retention
    now_ms = MIDNIGHT_MS - 12 * 3600_000
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(RETAINED), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        if how == "record":
            bl.record(ALICE, Usage(3, 1))
        else:
            d = bl.check(ALICE, Usage(3, 1))
            bl.commit(d.reservation, Usage(3, 1))
        ledger, _ = bl.engine.planners.core.ledger(ALICE, now_ms)
        assert raw.hgetall(ledger)  # the day's usage is in it
        assert raw.pttl(ledger) == 13 * 3600_000
    finally:
        raw.close()
        bl.close()


def test_a_counter_first_written_by_a_check_lives_to_its_day_end_plus_retention(monkeypatch):
    now_ms = MIDNIGHT_MS - 12 * 3600_000  # 12:00 UTC: 12 h to the day's end, plus 1 h
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(RETAINED), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        d = bl.check(ALICE, Usage(3, 1))
        (counter,) = raw.scan_iter(match=bl.keys.counter_pattern("acme"))
        assert raw.pttl(counter) == 13 * 3600_000
        # its first usage (the commit) sets the expiry again, from the reservation's plan
        raw.pexpire(counter, 1000)
        bl.commit(d.reservation, Usage(3, 1))
        assert raw.pttl(counter) == 13 * 3600_000
    finally:
        raw.close()
        bl.close()


def test_a_counter_first_written_by_a_record_lives_to_its_day_end_plus_retention(monkeypatch):
    """A record before any check creates the day's counter from its plan line (settle.lua),
    whose expire-at is the period's end plus the retention: 12 h + 1 h at 12:00 UTC."""
    now_ms = MIDNIGHT_MS - 12 * 3600_000
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(RETAINED), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        bl.record(ALICE, Usage(3, 1))
        (counter,) = raw.scan_iter(match=bl.keys.counter_pattern("acme"))
        assert raw.hget(counter, "u:n") == b"1"
        assert raw.pttl(counter) == 13 * 3600_000
    finally:
        raw.close()
        bl.close()


def test_a_ledger_first_written_by_a_commit_by_id_lives_a_day_plus_retention(monkeypatch):
    """A commit by id alone (the sidecar's, no subject) cannot tell the ledger's day from
    the id: its ledger lives a whole day plus the retention from now, at least to its day's
    end plus the retention (24 h + 1 h at 12:00 UTC)."""
    now_ms = MIDNIGHT_MS - 12 * 3600_000
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(RETAINED), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        d = bl.check(ALICE, Usage(3, 1))
        bl.commit_by_id("acme", d.reservation.id, Usage(3, 1, cost=Decimal("0.000006")))
        ledger, _ = bl.engine.planners.core.ledger(ALICE, now_ms)
        assert raw.hgetall(ledger)
        assert raw.pttl(ledger) == 25 * 3600_000
    finally:
        raw.close()
        bl.close()


HOURLY_RATE = """
timezone: UTC
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {rates: [{metric: invocations, limit: 1, per: hour}]}}
"""


def test_a_rate_key_lives_until_its_arrival_time_plus_one_second(monkeypatch):
    # one call an hour: after one call the next arrival is an hour away; the key keeps it
    # that long plus a second (3600 s + 1 s), not longer
    now_ms = MIDNIGHT_MS - 12 * 3600_000
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(HOURLY_RATE), url, timeout=2.0, clock=lambda: now_ms)
    raw = connect_sync(url, timeout=2.0)
    try:
        assert bl.check(ALICE, Usage(1, 0)).allowed
        rates = [k for k in raw.scan_iter(match=f"{bl.keys.org_base('acme')}:g:*")]
        assert len(rates) == 1
        assert raw.pttl(rates[0]) == 3601_000
    finally:
        raw.close()
        bl.close()


LEASED = """
timezone: UTC
reservation_ttl_seconds: 60
pricing: {m: {input_per_million: "1", output_per_million: "3"}}
orgs: {acme: {limits: [{metric: invocations, amount: 25, period: day}]}}
"""


@pytest.mark.parametrize(("ahead_ms", "ttl_ms"), [(0, 3_600_001), (1, 3_600_001),
                                                  (2, 3_600_002)])
def test_a_shrunk_reservation_key_lives_at_least_a_millisecond_past_its_new_expiry(
        monkeypatch, ahead_ms, ttl_ms):
    """A shrink moves the expiry to ``now + ahead`` and the key's life to that plus the
    settle-marker retention (idempotency: 1 h), the expiry counting at least 1 ms."""
    now_ms = MIDNIGHT_MS - 12 * 3600_000
    freeze_redis_time(monkeypatch, now_ms / 1000)
    url = f"memory://{uuid.uuid4().hex}"
    bl = BudgetLimiter(parse_policy(LEASED), url, timeout=2.0, clock=lambda: now_ms,
                       leases=LeaseConfig(calls=4, seconds=60))
    raw = connect_sync(url, timeout=2.0)
    try:
        d = bl.check(ALICE, Usage(1, 0))
        lease = bl.leases._unsettled[d.reservation.lease]
        settle = bl.engine.planners.settle
        keep = Amounts(invocations=2, input_tokens=0, output_tokens=0, total_tokens=0, cost=0)
        bl.execute(settle.plan_shrink(lease.reservation, keep, now_ms + ahead_ms, now_ms))
        key = settle.core.keys.reservation("acme", lease.reservation.id)
        assert raw.pttl(key) == ttl_ms
    finally:
        raw.close()
        bl.close()
