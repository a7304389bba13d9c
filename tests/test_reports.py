"""Reports over a seeded store, against figures computed by hand (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from budgetlimiter.durable.store.records import Adjustment, UsageRow
from budgetlimiter.durable.store.reports import cost_by_team, cost_by_user, trend, usage_by_agent
from budgetlimiter.durable.store.sql import FlushOutcome, Store
from budgetlimiter.subject import Scope
from budgetlimiter.usage import Metric

RANGE = ("2026-01-28", "2026-03-05")


def u(team: str, user: str, agent: str, day: str, n: int, inp: int, out: int, cost: int,
      org: str = "acme") -> UsageRow:
    return UsageRow(org, team, user, agent, day, n, inp, out, inp + out, cost)


# Weekdays: 01-30 Fri, 02-02 Mon, 02-03 Tue, 02-08 Sun, 02-15 Sun, 03-01 Sun, 03-02 Mon.
R1 = u("eng", "alice", "gpt", "2026-01-30", 2, 100, 50, 1000)      # tokens 150
R2 = u("eng", "alice", "claude", "2026-02-02", 1, 200, 20, 3000)   # tokens 220
R3a = u("eng", "bob", "gpt", "2026-02-03", 1, 100, 10, 500)        # R3 = R3a + R3b:
R3b = u("eng", "bob", "gpt", "2026-02-03", 2, 200, 20, 1500)       # 3, 300, 30, 2000 (330)
R4 = u("ops", "carol", "gpt", "2026-02-08", 1, 50, 5, 500)         # tokens 55
R5 = u("", "", "copilot", "2026-02-15", 4, 40, 40, 4000)           # tokens 80, no team
R6 = u("eng", "", "copilot", "2026-03-01", 1, 10, 10, 100)         # tokens 20, team only
R7 = u("ops", "carol", "claude", "2026-03-02", 2, 20, 0, 700)      # tokens 20
OUTSIDE = [u("eng", "alice", "gpt", "2026-03-10", 9, 9, 9, 99999),
           u("eng", "alice", "gpt", "2025-12-31", 1, 1, 1, 11)]
GLOBEX = u("eng", "alice", "gpt", "2026-02-02", 5, 5, 5, 77777, org="globex")


def adj(scope: str, metric: str, amount: int, day: str) -> Adjustment:
    return Adjustment(org="acme", scope=scope, metric=metric, amount=amount, day=day,
                      who="ops", why="test", at_ms=1)


@pytest.fixture
def store(make_store) -> Store:
    s: Store = make_store()
    flushes = [[R1, R2, R3a], [R3b, R4, *OUTSIDE], [R5, R6, R7]]
    for seq, rows in enumerate(flushes):
        assert s.apply_flush("acme", f"f{seq}", seq, rows) is FlushOutcome.APPLIED
    assert s.apply_flush("globex", "g0", 0, [GLOBEX]) is FlushOutcome.APPLIED
    s.add_adjustment(adj("org:acme", "cost", 250, "2026-02-07"))
    s.add_adjustment(adj("org:acme/team:eng", "cost", -300, "2026-02-03"))
    s.add_adjustment(adj("org:acme", "invocations", 7, "2026-02-08"))
    return s


def test_usage_by_agent(store):
    assert usage_by_agent(store, "acme", *RANGE) == [
        {"agent": "copilot", "invocations": 5, "input_tokens": 50, "output_tokens": 50,
         "total_tokens": 100, "cost": 4100},
        {"agent": "claude", "invocations": 3, "input_tokens": 220, "output_tokens": 20,
         "total_tokens": 240, "cost": 3700},
        {"agent": "gpt", "invocations": 6, "input_tokens": 450, "output_tokens": 85,
         "total_tokens": 535, "cost": 3500},
        # no adjustment names an agent: org +250 and +7 invocations, team eng -300
        {"agent": "(adjustment)", "invocations": 7, "input_tokens": 0, "output_tokens": 0,
         "total_tokens": 0, "cost": 250 - 300},
    ]
    assert usage_by_agent(store, "nobody", *RANGE) == []
    assert [r["cost"] for r in usage_by_agent(store, "acme", "2026-03-10", "2026-03-10")] \
        == [99999]


def test_cost_by_team(store):
    assert cost_by_team(store, "acme", *RANGE) == [
        {"team": "eng", "cost": 6100 - 300, "total_tokens": 720, "invocations": 7},
        {"team": "", "cost": 4000, "total_tokens": 80, "invocations": 4},
        {"team": "ops", "cost": 1200, "total_tokens": 75, "invocations": 3},
        {"team": "(adjustment)", "cost": 250, "total_tokens": 0, "invocations": 7},  # org's
    ]
    feb = cost_by_team(store, "acme", "2026-02-01", "2026-02-28")
    assert [(r["team"], r["cost"]) for r in feb] == [("eng", 5000 - 300), ("", 4000),
                                                     ("ops", 500), ("(adjustment)", 250)]


def test_cost_by_user(store):
    assert cost_by_user(store, "acme", *RANGE) == [
        {"team": "", "user": "", "cost": 4000, "total_tokens": 80, "invocations": 4},
        {"team": "eng", "user": "alice", "cost": 4000, "total_tokens": 370, "invocations": 3},
        {"team": "eng", "user": "bob", "cost": 2000, "total_tokens": 330, "invocations": 3},
        {"team": "ops", "user": "carol", "cost": 1200, "total_tokens": 75, "invocations": 3},
        {"team": "(adjustment)", "user": "", "cost": 250, "total_tokens": 0,
         "invocations": 7},  # the org's adjustments
        {"team": "eng", "user": "", "cost": 100, "total_tokens": 20, "invocations": 1},
        {"team": "eng", "user": "(adjustment)", "cost": -300, "total_tokens": 0,
         "invocations": 0},  # team eng's, no user's
    ]
    eng = cost_by_user(store, "acme", *RANGE, team="eng")
    assert [(r["user"], r["cost"]) for r in eng] == [("alice", 4000), ("bob", 2000), ("", 100),
                                                     ("(adjustment)", -300)]
    assert cost_by_user(store, "acme", *RANGE, team="nope") == []


def test_trend_per_day_zero_filled_with_adjustments(store):
    org = Scope("acme")
    assert trend(store, org, Metric.COST, "day", "2026-02-06", "2026-02-09") == [
        ("2026-02-06", 0), ("2026-02-07", 250), ("2026-02-08", 500), ("2026-02-09", 0)]
    assert trend(store, org, Metric.INVOCATIONS, "day", "2026-02-08", "2026-02-08") == [
        ("2026-02-08", 1 + 7)]
    eng_gpt = Scope("acme", "eng", agent="gpt")
    assert trend(store, eng_gpt, Metric.INVOCATIONS, "day", "2026-02-01", "2026-02-04") == [
        ("2026-02-01", 0), ("2026-02-02", 0), ("2026-02-03", 3), ("2026-02-04", 0)]


def test_trend_per_week(store):
    org = Scope("acme")
    assert trend(store, org, Metric.COST, "week", *RANGE) == [  # Monday weeks
        ("2026-01-26", 1000), ("2026-02-02", 3000 + 2000 + 500 + 250 - 300),
        ("2026-02-09", 4000),
        ("2026-02-16", 0), ("2026-02-23", 100), ("2026-03-02", 700)]
    assert trend(store, org, Metric.COST, "week", *RANGE, week_start=6) == [  # Sunday weeks
        ("2026-01-25", 1000), ("2026-02-01", 3000 + 2000 + 250 - 300), ("2026-02-08", 500),
        ("2026-02-15", 4000), ("2026-02-22", 0), ("2026-03-01", 100 + 700)]


def test_trend_per_month(store):
    eng = Scope("acme", "eng")
    assert trend(store, eng, Metric.TOTAL_TOKENS, "month", "2026-01-01", "2026-04-30") == [
        ("2026-01", 150), ("2026-02", 550), ("2026-03", 20 + 18), ("2026-04", 0)]
    assert trend(store, eng, Metric.COST, "month", "2025-12-15", "2026-04-30") == [
        ("2025-12", 11), ("2026-01", 1000), ("2026-02", 5000 - 300), ("2026-03", 100 + 99999),
        ("2026-04", 0)]
    gpt = Scope("acme", agent="gpt")  # every gpt use of the org
    assert trend(store, gpt, Metric.COST, "month", "2026-01-01", "2026-03-31") == [
        ("2026-01", 1000), ("2026-02", 2500), ("2026-03", 99999)]
    carol = Scope("acme", "ops", "carol")
    assert trend(store, carol, Metric.COST, "month", "2026-02-01", "2026-03-31") == [
        ("2026-02", 500), ("2026-03", 700)]


def test_user_scope_without_team(make_store):
    s = make_store()
    s.apply_flush("initech", "f", 0, [u("", "dave", "gpt", "2026-05-01", 1, 1, 1, 10, "initech"),
                                      u("t", "dave", "gpt", "2026-05-01", 1, 1, 1, 20, "initech")])
    assert trend(s, Scope("initech", user="dave"), Metric.COST, "day", "2026-05-01",
                 "2026-05-01") == [("2026-05-01", 10)]
    assert trend(s, Scope("initech", "t", "dave"), Metric.COST, "day", "2026-05-01",
                 "2026-05-01") == [("2026-05-01", 20)]


def test_bad_report_arguments(store):
    org = Scope("acme")
    with pytest.raises(ValueError, match="granularity"):
        trend(store, org, Metric.COST, "year", *RANGE)
    with pytest.raises(ValueError, match="before"):
        trend(store, org, Metric.COST, "day", "2026-03-02", "2026-03-01")
    with pytest.raises(ValueError, match="date like"):
        cost_by_team(store, "acme", "yesterday", "2026-03-01")
    with pytest.raises(ValueError, match="week_start"):
        trend(store, org, Metric.COST, "week", *RANGE, week_start=7)
