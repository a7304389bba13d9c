"""``budget.forecast_exceeded``: fired once per (scope, metric, period) when the forecast
first reaches the limit with enough data, through the durable outbox — with an injected
clock, across day, week and month periods and DST changes, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from budgetlimiter import Subject, Usage
from budgetlimiter.durable.alerts import FORECAST_EVENT_TYPE, event_payload
from budgetlimiter.durable.forecast_alerts import ForecastAlerts
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.store.sql import Store

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def policy(limit: str, tz: str = "UTC") -> str:
    return (f"timezone: {tz}\npricing: {{gpt: {{per_invocation: \"0.01\"}}}}\n"
            f"orgs:\n  acme:\n    teams:\n      eng:\n        limits:\n          - {limit}\n")


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/alerts.db")
    s.migrate()
    yield s
    s.close()


def drive(limiter, alerts, clock, until: datetime, step: timedelta, per_step: int) -> None:
    """Spend ``per_step`` invocations ($0.01 each) every ``step`` until ``until``, letting
    the alerts look after each step (as reconciler passes would)."""
    while clock() < until.timestamp() * 1000:
        clock.advance(step.total_seconds())
        if per_step:
            limiter.record(ALICE, Usage(invocations=per_step))
        alerts.run_org("acme")


def forecast_events(store):
    return sorted((e.scope, e.metric, e.period, e.period_id) for e in store.events(limit=1000)
                   if e.is_forecast)


def test_day_forecast_fires_once_when_enough_data_shows_the_limit_will_be_reached(
        make_limiter, clock, store):
    clock.set(datetime(2026, 3, 10, tzinfo=timezone.utc))
    bl = make_limiter(policy('{metric: cost, amount: "1", period: day}'), client="sync")
    alerts = ForecastAlerts(bl, store, ["webhook"], every_s=0)
    # $0.06 an hour: $1.44 by midnight. Nothing yet at 01:20: less than half the 3 h window
    drive(bl, alerts, clock, datetime(2026, 3, 10, 1, 20, tzinfo=timezone.utc),
          timedelta(minutes=10), 1)
    assert forecast_events(store) == []
    drive(bl, alerts, clock, datetime(2026, 3, 10, 6, tzinfo=timezone.utc),
          timedelta(minutes=10), 1)
    assert forecast_events(store) == [("org:acme/team:eng", "cost", "day", "2026-03-10")]
    (event,) = store.events()
    assert event.occurred_ms == int(datetime(2026, 3, 10, 1, 30,
                                             tzinfo=timezone.utc).timestamp() * 1000)
    payload = event_payload(event)
    assert payload["type"] == FORECAST_EVENT_TYPE == "budget.forecast_exceeded"
    assert payload["data"]["projected"] == "1.440000" and payload["data"]["limit"] == "1.000000"
    assert len(store.deliveries("pending")) == 1  # one delivery per sink, like a threshold
    # the next day fires again, once
    drive(bl, alerts, clock, datetime(2026, 3, 11, 12, tzinfo=timezone.utc),
          timedelta(minutes=10), 1)
    assert forecast_events(store) == [("org:acme/team:eng", "cost", "day", "2026-03-10"),
                                      ("org:acme/team:eng", "cost", "day", "2026-03-11")]


def test_a_pace_that_fits_never_fires(make_limiter, clock, store):
    clock.set(datetime(2026, 3, 10, tzinfo=timezone.utc))
    bl = make_limiter(policy('{metric: cost, amount: "1", period: day}'), client="sync")
    alerts = ForecastAlerts(bl, store, ["webhook"], every_s=0)
    drive(bl, alerts, clock, datetime(2026, 3, 10, 23, tzinfo=timezone.utc),
          timedelta(minutes=30), 1)  # $0.02 an hour: $0.48 a day
    assert forecast_events(store) == []


@pytest.mark.parametrize("limit,fires", [
    ('{metric: cost, amount: "1", period: day, mode: soft}', False),
    ('{metric: cost, amount: "1", period: day, mode: soft, forecast_alert: true}', True),
    ('{metric: cost, amount: "1", period: day, forecast_alert: false}', False),
])
def test_forecast_alert_follows_the_policy_default_on_for_hard_limits(
        make_limiter, clock, store, limit, fires):
    clock.set(datetime(2026, 3, 10, tzinfo=timezone.utc))
    bl = make_limiter(policy(limit), client="sync")
    alerts = ForecastAlerts(bl, store, ["webhook"], every_s=0)
    drive(bl, alerts, clock, datetime(2026, 3, 10, 6, tzinfo=timezone.utc),
          timedelta(minutes=10), 1)
    assert bool(forecast_events(store)) is fires
    # what applies says so (policy show, GET /v1/policy/effective)
    shown = bl.policy.resolve(ALICE).to_dict()["scopes"]
    assert [lim["forecast_alert"] for sc in shown for lim in sc["limits"]] == [fires]


def test_week_and_month_fire_once_per_period(make_limiter, clock, store):
    clock.set(datetime(2026, 3, 2, tzinfo=timezone.utc))  # a Monday
    bl = make_limiter(policy('{metric: invocations, amount: 500, period: week}\n'
                             '          - {metric: invocations, amount: 2000, period: month}'),
                      client="sync")
    alerts = ForecastAlerts(bl, store, ["webhook"], every_s=0)
    # 4 an hour: 672 a week (over 500), ~2,900 a month (over 2,000)
    drive(bl, alerts, clock, datetime(2026, 4, 13, 12, tzinfo=timezone.utc), timedelta(hours=1),
          4)  # (the week of the 13th is 12 hours old: less than half its 2-day window)
    events = forecast_events(store)
    weeks = [e[3] for e in events if e[2] == "week"]
    months = [e[3] for e in events if e[2] == "month"]
    assert weeks == ["2026-03-02W", "2026-03-09W", "2026-03-16W", "2026-03-23W",
                     "2026-03-30W", "2026-04-06W"]
    assert months == ["2026-03", "2026-04"]


@pytest.mark.parametrize("day,hours", [("2026-03-08", 23), ("2026-11-01", 25)])
def test_dst_days_fire_once_for_their_local_date(make_limiter, clock, store, day, hours):
    ny = ZoneInfo("America/New_York")
    start = datetime.fromisoformat(day).replace(tzinfo=ny)
    clock.set(start)
    bl = make_limiter(policy('{metric: invocations, amount: 100, period: day}',
                             "America/New_York"), client="sync")
    alerts = ForecastAlerts(bl, store, ["webhook"], every_s=0)
    # 6 an hour: 138 or 150 by the end of the local day, over 100 either way
    drive(bl, alerts, clock, start + timedelta(hours=hours + 6), timedelta(minutes=10), 1)
    ids = [e[3] for e in forecast_events(store)]
    assert ids[0] == day and len(ids) == len(set(ids))
    (event,) = [e for e in store.events(limit=100) if e.period_id == day]
    end = (start + timedelta(days=1)).replace(tzinfo=ny)
    assert event.occurred_ms < end.timestamp() * 1000
    assert (end.astimezone(timezone.utc) - start.astimezone(timezone.utc)) == \
        timedelta(hours=hours)


def test_reconcilers_running_at_once_record_one_event(make_limiter, clock, store):
    clock.set(datetime(2026, 3, 10, tzinfo=timezone.utc))
    text = policy('{metric: cost, amount: "1", period: day}')
    a = make_limiter(text, client="sync")
    b = make_limiter(text, client="sync")
    recs = [Reconciler(a, store, sinks=["webhook", "log"]),
            Reconciler(b, store, sinks=["webhook", "log"])]
    for r in recs:
        r.forecasts.every_ms = 0
    for _ in range(36):  # six hours, every ten minutes, both reconcilers
        clock.advance(600)
        a.record(ALICE, Usage(invocations=1))
        for r in recs:
            r.run_once()
    assert forecast_events(store) == [("org:acme/team:eng", "cost", "day", "2026-03-10")]
    assert sorted(d.sink for d in store.deliveries("pending") if d.event.is_forecast) == \
        ["log", "webhook"]
    # a restore after Redis lost everything ignores the forecast event (no threshold 0)
    assert recs[0].restore_org("acme") >= 0
