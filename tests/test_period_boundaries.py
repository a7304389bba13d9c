"""Budgets at calendar boundaries, end to end on every backend and both clients: month end,
DST days, week start."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from budgetlimiter import Subject, Usage

NY = ZoneInfo("America/New_York")

POLICY = """
timezone: America/New_York
week_start: sunday
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 2, period: month}
      - {metric: invocations, amount: 3, period: week}
      - {metric: invocations, amount: 2, period: day, mode: soft}
"""
S = Subject("acme", "gpt")


def spend(bl, n=1):
    out = []
    for _ in range(n):
        d = bl.check(S)
        if d.allowed:
            bl.commit(d.reservation, Usage())
        out.append(d)
    return out


def test_month_end_in_the_org_timezone(make_limiter, clock):
    bl = make_limiter(POLICY)
    # Jan 31, 23:30 in New York is already Feb 1 in UTC: still January for this org
    clock.set(datetime(2027, 1, 31, 23, 30, tzinfo=NY))
    assert [d.allowed for d in spend(bl, 3)] == [True, True, False]
    denied = bl.check(S)
    assert denied.blocked_by.period == "month"
    assert denied.resets_at == datetime(2027, 2, 1, 5, 0, tzinfo=timezone.utc)
    clock.set(datetime(2027, 2, 1, 0, 0, tzinfo=NY))
    assert bl.check(S).allowed


def test_dst_day_has_25_hours(make_limiter, clock):
    bl = make_limiter(POLICY)
    # 2026-11-01 is the fall-back day in New York: 00:00 EDT to 00:00 EST is 25 hours
    clock.set(datetime(2026, 11, 1, 0, 30, tzinfo=NY))
    d = spend(bl)[0]
    day = next(s for s in d.limits if s.period == "day")
    assert day.resets_at == datetime(2026, 11, 2, 5, 0, tzinfo=timezone.utc)
    clock.set(datetime(2026, 11, 1, 23, 59, tzinfo=NY))
    later = bl.status(S)
    assert [s.used for s in later if s.period == "day"] == [1]  # same day, 24.5 hours later


def test_week_starts_on_the_configured_day(make_limiter, clock):
    bl = make_limiter(POLICY.replace("amount: 2, period: month", "amount: 99, period: month"))
    clock.set(datetime(2026, 3, 14, 12, 0, tzinfo=NY))  # Saturday
    assert [d.allowed for d in spend(bl, 4)] == [True, True, True, False]
    clock.set(datetime(2026, 3, 15, 0, 0, 1, tzinfo=NY))  # Sunday: a new week
    assert bl.check(S).allowed
