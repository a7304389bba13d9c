"""Forecasts in the sidecar: ``GET /v1/forecast/{scope}``, the dashboard tree's ``forecast``
object per limit, and the durable ledger's days as readings — on a real redis-server with the
test's clock."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from budgetlimiter import BudgetLimiter, Scope, Subject, Usage, parse_policy
from budgetlimiter.durable.store.records import UsageRow
from budgetlimiter.durable.store.sql import Store
from budgetlimiter.forecast.ledger import ledger_history

from . import test_server
from .test_server import ALICE, Start, problem

start = test_server.start  # the fixtures, with the policy of tests/test_server.py
policy_file = test_server.policy_file

pytestmark = pytest.mark.redis
FIELDS = {"projected", "period_end", "exhausts_at", "will_exceed", "window_seconds"}


def spend_steadily(client, clock, steps: int, minutes: int = 20, tokens: int = 100) -> None:
    """``tokens`` input tokens (100 micro-USD) every ``minutes``, reading the forecast each
    time (each read is a reading the next forecast uses)."""
    for _ in range(steps):
        clock.advance(minutes * 60)
        body = {"subject": ALICE, "actual": {"input_tokens": tokens}}
        assert client.post("/v1/record", json=body).status_code == 200
        assert client.get("/v1/forecast/org:acme/team:eng").status_code == 200


def test_forecast_endpoint_projects_the_day_budget_from_its_readings(start: Start, clock):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    client, _ = start()
    first = client.get("/v1/forecast/org:acme/team:eng").json()
    (day,) = first["forecasts"]
    assert day["projected"] is None and day["reason"]
    spend_steadily(client, clock, 18)  # $0.0003 an hour until 12:00
    (day,) = client.get("/v1/forecast/org%3Aacme%2Fteam%3Aeng").json()["forecasts"]
    assert day["used"] == "0.001800" and day["rate_per_hour"] == "0.000300"
    assert day["projected"] == "0.005400" and day["will_exceed"] is True
    # $0.001 limit, already passed (recorded usage is kept truthfully): exhausted now
    assert day["exhausts_at"] == "2026-03-10T12:00:00+00:00"
    assert day["period_end"] == "2026-03-11T00:00:00+00:00"
    assert day["window_seconds"] == 3 * 3600


def test_forecast_endpoint_refuses_a_bad_scope_naming_the_field(start: Start):
    client, _ = start()
    problem(client.get("/v1/forecast/team:eng"), 422, "invalid_input")


def test_tree_carries_a_forecast_object_on_every_budget_and_null_on_rates(start: Start, clock):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    client, _ = start()
    spend_steadily(client, clock, 18)
    doc = client.get("/v1/ui/tree", params={"org": "acme"}).json()
    limits = {(n["scope"], lim["period"]): lim for n in doc["scopes"] for lim in n["limits"]}
    team = limits[("org:acme/team:eng", "day")]["forecast"]
    assert set(team) == FIELDS
    assert team["projected"] == "0.005400" and team["will_exceed"] is True
    org = limits[("org:acme", "month")]["forecast"]
    assert set(org) == FIELDS and org["period_end"] == "2026-04-01T00:00:00+00:00"
    assert all("forecast" in t for t in doc["top"])
    rates = client.get("/v1/ui/tree", params={"org": "rl"}).json()
    assert [lim["forecast"] for n in rates["scopes"] for lim in n["limits"]] == [None]


def test_ledger_days_give_a_month_forecast_to_a_fresh_process(tmp_path, clock):
    """A process that has never read the counter still forecasts the month from the ledger's
    daily totals (closed days) plus the live counter."""
    policy = ("timezone: America/New_York\ndefault_pricing: {per_invocation: \"0\"}\n"
              "orgs:\n  acme:\n    limits:\n"
              "      - {metric: invocations, amount: 1000, period: month}\n")
    now = datetime(2026, 3, 12, 12, tzinfo=timezone.utc)  # DST began on the 8th
    clock.set(now)
    store = Store(f"sqlite:///{tmp_path}/ledger.db")
    store.migrate()
    rows = [UsageRow("acme", "", "", "gpt", f"2026-03-{d:02d}", invocations=20)
            for d in range(1, 12)]
    store.apply_flush("acme", "f1", 0, rows)
    bl = BudgetLimiter(parse_policy(policy), "memory://", clock=clock)
    bl.record(Subject("acme", "gpt"), Usage(invocations=228))  # 11 days x 20 + 8 today
    history = ledger_history(store, bl.engine, Scope("acme"), clock())
    (points,) = history.values()
    assert len(points) == 11 and points[-1][1] == 220
    without = bl.forecast("org:acme")
    assert without.forecasts[0] is not None and without.forecasts[0].projected is None
    (_status, f), = bl.forecast("org:acme", history).budgets()
    # over the last 7 days (from 03-05 12:00 UTC, 85 by then between the 80 and 100 of the
    # ledger's midnights) 143 were used; 19 days 16 hours to go (to 04-01 04:00 UTC, EDT)
    assert f.projected == 228 + 143 * 472 // 168
    assert not f.will_exceed and f.window_ms == 7 * 86_400_000
    store.close()
    bl.close()


def gauge_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_metrics_gauge_blocked_and_forecast_budgets_only(start: Start, clock):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    client, _ = start()
    spend_steadily(client, clock, 18)  # the team's $0.001 day is used up: blocked
    text = client.get("/metrics").text
    team = 'org="acme",period="day",scope="org:acme/team:eng"'
    assert f'budgetlimiter_budget_blocked{{metric="cost",{team}}} 1.0' in text
    assert f'budgetlimiter_budget_forecast_exceeds{{metric="cost",{team}}} 1.0' in text
    assert f'budgetlimiter_budget_projected{{metric="cost",{team}}} 0.0054' in text
    assert f'budgetlimiter_budget_limit{{metric="cost",{team}}} 0.001' in text
    assert 'budgetlimiter_scopes_blocked{org="acme"} 1.0' in text
    # the org's month ($0.0018 of $10) is neither blocked, nor forecast over, nor over 50 %
    assert not any('scope="org:acme"' in line
                   for line in gauge_lines(text, "budgetlimiter_budget_used"))


def test_metrics_gauges_listed_scopes_and_stay_bounded(start: Start, clock):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    client, _ = start(gauge_scopes=("org:acme",), gauge_max_budgets=1)
    spend_steadily(client, clock, 3)
    used = gauge_lines(client.get("/metrics").text, "budgetlimiter_budget_used")
    assert len(used) == 1 and 'scope="org:acme"' in used[0]  # the listed scope comes first


def test_the_in_process_reconciler_readings_serve_the_sidecar_forecast(start: Start, clock,
                                                                        tmp_path):
    """With --db the reconciler's passes read the hard budgets (for forecast alerts); the
    sidecar forecasts from those readings too, so a day budget nobody looked at has one."""
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    client, app = start(db_url=f"sqlite:///{tmp_path}/r.db", reconcile=True,
                        reconcile_interval=0.05, reconcile_lease=0)
    server = app.state.server
    book = server.reconcile.limiter.samples
    assert book is server.limiter.samples
    key = ("org:acme/team:eng", "cost", "2026-03-10")
    for _ in range(12):
        clock.advance(20 * 60)
        body = {"subject": ALICE, "actual": {"input_tokens": 100}}
        assert client.post("/v1/record", json=body).status_code == 200
        now = clock()
        deadline = time.monotonic() + 30  # bounds a hang; not a timing assertion
        while not any(t == now for t, _ in book.points(key)):
            assert time.monotonic() < deadline, "no reconcile pass read the counter"
            time.sleep(0.02)
    (day,) = client.get("/v1/forecast/org:acme/team:eng").json()["forecasts"]
    assert day["rate_per_hour"] == "0.000300" and day["projected"] == "0.005400"


def test_metrics_gauge_undeclared_orgs_of_a_defaults_only_policy(start: Start, clock,
                                                                 policy_file):
    policy_file.write_text("timezone: UTC\npricing: {gpt: {input_per_million: \"1\"}}\n"
                           "defaults:\n  team:\n    limits:\n"
                           "      - {metric: cost, amount: \"0.0001\", period: day}\n")
    client, _ = start()
    body = {"subject": {**ALICE, "org": "globex"}, "actual": {"input_tokens": 100}}
    assert client.post("/v1/record", json=body).status_code == 200
    text = client.get("/metrics").text
    assert 'budgetlimiter_scopes_blocked{org="globex"} 1.0' in text
    assert ('budgetlimiter_budget_blocked{metric="cost",org="globex",period="day",'
            'scope="org:globex/team:eng"} 1.0') in text
