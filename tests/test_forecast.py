"""Budget forecasts: the projection (pure, an injected clock, integers) and ``forecast(scope)``
on every backend and both clients."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from budgetlimiter import Metric, Subject, Usage
from budgetlimiter.forecast import WINDOW_MS, SampleBook, project
from budgetlimiter.policy.periods import PeriodKind, window_at
from budgetlimiter.subject import Scope

HOUR = 3_600_000
DAY = 24 * HOUR
SCOPE = Scope("acme", "eng")
START = int(datetime(2026, 3, 10, tzinfo=timezone.utc).timestamp() * 1000)
END = START + DAY


def day_forecast(used: int, now_ms: int, observed=(), limit: int = 1_000_000):
    return project(scope=SCOPE, metric=Metric.COST, kind=PeriodKind.DAY, period_id="2026-03-10",
                   used=used, limit=limit, start_ms=START, end_ms=END, now_ms=now_ms,
                   observed=observed)


def steady(rate_per_hour: int, until_ms: int, every_ms: int = 10 * 60_000):
    """Readings of a counter growing ``rate_per_hour`` from the period's start."""
    return [(t, rate_per_hour * (t - START) // HOUR) for t in range(START, until_ms, every_ms)]


def test_forecast_is_none_when_only_the_period_start_and_now_are_known():
    # 18 hours into the day, $0.9 used: a plausible line, but from two points only
    f = day_forecast(900_000, START + 18 * HOUR)
    assert f.projected is None and f.exhausts_ms is None and not f.will_exceed
    assert "apart" in f.reason


def test_forecast_is_none_when_the_period_started_less_than_half_a_window_ago():
    now = START + HOUR
    f = day_forecast(500_000, now, steady(500_000, now, every_ms=60_000))
    assert f.projected is None and "period started" in f.reason


def test_steady_pace_projects_the_period_end_exactly_in_integers():
    now = START + 12 * HOUR
    f = day_forecast(12 * 40_000, now, steady(40_000, now))
    assert f.projected == 24 * 40_000
    assert f.rate_per_hour == 40_000
    assert f.window_ms == WINDOW_MS[PeriodKind.DAY]
    assert f.exhausts_ms is None and not f.will_exceed
    assert f.to_dict()["projected"] == "0.960000"


def test_exhaustion_time_is_when_the_recent_pace_reaches_the_limit():
    now = START + 12 * HOUR
    f = day_forecast(12 * 50_000, now, steady(50_000, now), limit=1_000_000)
    # $0.40 left at $0.05/h: 8 hours from now
    assert f.exhausts_ms == now + 8 * HOUR
    assert f.will_exceed and f.projected == 1_200_000


def test_rate_follows_the_recent_window_not_the_whole_period():
    # idle for 9 hours, then $0.10/h for the last 3 hours: the day ends at $0.30 + 12 * 0.10
    now = START + 12 * HOUR
    observed = [(t, 0) for t in range(START, START + 9 * HOUR, 30 * 60_000)]
    observed += [(t, 100_000 * (t - START - 9 * HOUR) // HOUR)
                 for t in range(START + 9 * HOUR, now, 30 * 60_000)]
    f = day_forecast(300_000, now, observed, limit=10_000_000)
    assert f.rate_per_hour == 100_000
    assert f.projected == 300_000 + 12 * 100_000


def test_budget_already_used_up_exhausts_now():
    now = START + 12 * HOUR
    f = day_forecast(1_000_000, now, steady(90_000, now), limit=1_000_000)
    assert f.exhausts_ms == now and f.will_exceed


def test_no_spending_in_the_window_projects_the_current_usage():
    now = START + 12 * HOUR
    observed = [(t, 70_000) for t in range(START + HOUR, now, 20 * 60_000)]
    f = day_forecast(70_000, now, observed)
    assert f.projected == 70_000 and f.exhausts_ms is None and f.rate_per_hour == 0


def test_a_credit_since_a_reading_never_makes_the_rate_negative():
    now = START + 12 * HOUR
    observed = [(t, 500_000) for t in range(START + HOUR, now, 20 * 60_000)]
    f = day_forecast(100_000, now, observed)  # $0.40 credited since
    assert f.projected == 100_000 and f.rate_per_hour == 0


def test_dst_day_projects_to_the_real_end_of_a_23_hour_day():
    ny = ZoneInfo("America/New_York")
    spring = int(datetime(2026, 3, 8, 12, tzinfo=ny).timestamp() * 1000)  # 23-hour day
    w = window_at(PeriodKind.DAY, spring, ny)
    assert w.duration_ms == 23 * HOUR
    observed = [(t, 10_000 * (t - w.start_ms) // HOUR)
                for t in range(w.start_ms, spring, 15 * 60_000)]
    used = 10_000 * (spring - w.start_ms) // HOUR
    f = project(scope=SCOPE, metric=Metric.COST, kind=PeriodKind.DAY, period_id=w.id,
                used=used, limit=10**9, start_ms=w.start_ms, end_ms=w.end_ms, now_ms=spring,
                observed=observed)
    assert f.projected == 23 * 10_000
    assert f.to_dict()["period_end"] == "2026-03-09T04:00:00+00:00"


def test_sample_book_keeps_a_bounded_number_of_readings_per_counter():
    book = SampleBook(max_series=2)
    window = WINDOW_MS[PeriodKind.DAY]
    for i in range(10_000):
        book.observe(("s", "cost", "d"), START + i * 60_000, i, window)
    kept = book.points(("s", "cost", "d"))
    assert len(kept) <= 18
    assert kept[0][0] <= START + 9_999 * 60_000 - window < kept[1][0]
    for name in ("a", "b", "c"):
        book.observe((name, "cost", "d"), START, 0, window)
    assert len(book) == 2 and book.points(("s", "cost", "d")) == []


# ``forecast(scope)`` on both clients ------------------------------------------------------

DAILY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    teams:
      eng:
        limits: [{metric: cost, amount: "1", period: day}]
        rates: [{metric: requests, limit: 100, per: second}]
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")


def test_forecast_builds_up_from_readings_and_projects_the_day(make_limiter, clock):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    bl = make_limiter(DAILY)
    first = bl.forecast("org:acme/team:eng")
    assert next(f for _, f in first.budgets()).projected is None
    # $0.03 an hour (30,000 input tokens at $1/M) for six hours, read every 20 minutes
    for _ in range(18):
        clock.advance(20 * 60)
        bl.record(ALICE, Usage(input_tokens=10_000))
        result = bl.forecast(Scope("acme", "eng"))
    (status, f), = result.budgets()
    assert status.used == 180_000 and f.used == 180_000
    assert f.rate_per_hour == 30_000
    # 12:00 now, 12 hours left at $0.03/h
    assert f.projected == 180_000 + 12 * 30_000 and not f.will_exceed
    assert [s.kind for s in result.limits] == ["budget", "rate"]
    assert result.forecasts[1] is None
    doc = result.to_dict()
    assert doc["forecasts"][0]["projected"] == "0.540000"
    assert doc["forecasts"][0]["period_end"] == "2026-03-11T00:00:00+00:00"
