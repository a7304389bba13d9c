"""Operator adjustments are one number everywhere: live counters, the SQL record, reports and
restores agree. An adjustment counts in its scope and the scopes above it, a credit stops at
zero usage, an id makes it idempotent, and Redis is changed first. Runs on memory:// and a
real redis-server (where it applies), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from budgetlimiter import BudgetLimiter, Scope, Subject, Usage, parse_policy
from budgetlimiter.cli import main, run
from budgetlimiter.durable.adjust import affected_scopes, apply_adjustment, plan_adjust
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.store import MIGRATIONS, Store
from budgetlimiter.durable.store.records import Adjustment
from budgetlimiter.durable.store.reports import cost_by_team, cost_by_user, trend, usage_by_agent
from budgetlimiter.engine.outage import UNAVAILABLE
from budgetlimiter.errors import AdjustmentConflict, AdjustmentIncomplete, InvalidInput
from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.testing import LiveServer
from budgetlimiter.usage import Metric

from .servers import RedisServer, dead_port

#: adjustments and the reconciler are operator tools on the sync client
pytestmark = pytest.mark.sync_only("the durable side (adjustments, reconciler) takes the sync "
                                   "client")

POLICY = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
  copilot: {per_invocation: "0.04"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "1000", period: month}
    agents:
      copilot:
        limits: [{metric: invocations, amount: 1000, period: day}]
    teams:
      eng:
        limits: [{metric: cost, amount: "100", period: day}]
        defaults:
          user:
            limits: [{metric: cost, amount: "20", period: day}]
"""
BOB = Subject("acme", "gpt", team="eng", user="bob")
ALICE = Subject("acme", "gpt", team="eng", user="alice")
CAROL = Subject("acme", "gpt", team="eng", user="carol")
USD = 1_000_000
ORG, TEAM = "org:acme", "org:acme/team:eng"
U_BOB, U_ALICE, U_CAROL = (f"{TEAM}/user:{u}" for u in ("bob", "alice", "carol"))
DAY = "2026-03-10"  # the test clock's day


@pytest.fixture
def bl(make_limiter: Any) -> BudgetLimiter:
    limiter: BudgetLimiter = make_limiter(POLICY)
    return limiter


@pytest.fixture
def store(make_store: Any) -> Store:
    s: Store = make_store()
    return s


def used(limiter: BudgetLimiter, scope: str, metric: str = "cost") -> int:
    """Live ``used`` of the scope's budget of ``metric`` (each has one period here)."""
    found = [s.used for s in limiter.scope_status(scope)
             if s.kind == "budget" and s.metric.value == metric]
    assert len(found) == 1, found
    assert found[0] is not None
    return found[0]


def live(limiter: BudgetLimiter, *scopes: str) -> list[int]:
    return [used(limiter, s) for s in scopes]


def spend(limiter: BudgetLimiter, subject: Subject, usd: str) -> None:
    limiter.record(subject, Usage(cost=Decimal(usd)))


def adjust(limiter: BudgetLimiter, store: Any, scope: str, amount: int,
           metric: Metric = Metric.COST, **kw: Any) -> Any:
    return apply_adjustment(limiter, store, Scope.parse(scope), metric, amount, "ops",
                            "refund", **kw)


def marker_keys(limiter: BudgetLimiter) -> list[Any]:
    return list(limiter.redis.scan_iter(match=f"{limiter.keys.org_base('acme')}:j:*"))


# ------------------------------------------------------------------ which counters move


def test_affected_scopes_are_the_chain_above_the_scope() -> None:
    assert affected_scopes(Scope("acme", "eng", "bob")) == [
        Scope("acme"), Scope("acme", "eng"), Scope("acme", "eng", "bob")]
    assert affected_scopes(Scope("acme", "eng", agent="copilot")) == [
        Scope("acme"), Scope("acme", agent="copilot"), Scope("acme", "eng"),
        Scope("acme", "eng", agent="copilot")]
    assert affected_scopes(Scope("acme", user="dave")) == [Scope("acme"),
                                                           Scope("acme", user="dave")]


def test_a_credit_of_a_user_is_a_credit_of_its_team_and_org(bl: BudgetLimiter,
                                                             store: Store) -> None:
    spend(bl, BOB, "25")
    spend(bl, ALICE, "5")
    held = bl.check(ALICE, Usage(cost=Decimal("2")))  # a live reservation: held stays apart
    assert held.allowed and held.reservation is not None
    out = adjust(bl, store, U_BOB, -10 * USD)
    assert live(bl, U_BOB, U_ALICE, TEAM, ORG) == [15 * USD, 5 * USD, 20 * USD, 20 * USD]
    assert (out.status, out.adjustment.amount, out.adjustment.requested) == (
        "applied", -10 * USD, -10 * USD)
    team = next(s for s in bl.scope_status(TEAM) if s.metric is Metric.COST)
    assert team.reserved == 2 * USD  # used and held moved together
    bl.release(held.reservation)
    assert next(s for s in bl.scope_status(TEAM) if s.metric is Metric.COST).reserved == 0


def test_an_agent_scope_adjustment_counts_in_the_org_agent_scope(bl: BudgetLimiter,
                                                                  store: Store) -> None:
    bob_copilot = Subject("acme", "copilot", team="eng", user="bob")
    bl.record(bob_copilot, Usage(invocations=3))
    scope = "org:acme/agent:copilot"
    assert used(bl, scope, "invocations") == 3
    # no limit of its own: the adjustment lands on org:acme/agent:copilot
    adjust(bl, store, f"{U_BOB}/agent:copilot", -2, Metric.INVOCATIONS)
    assert used(bl, scope, "invocations") == 1


def test_an_adjustment_nothing_can_count_is_refused_and_writes_nothing(
        bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "1")
    with pytest.raises(InvalidInput, match=r"org:acme/team:eng.*total_tokens"):
        adjust(bl, store, TEAM, -5, Metric.TOTAL_TOKENS)
    with pytest.raises(InvalidInput, match="integer"):
        plan_adjust(bl.engine.planners.core, Scope("acme"), Metric.COST, 1.5, "x", 0)  # type: ignore[arg-type]
    assert store.adjustments("acme", "2000-01-01", "2100-01-01") == []
    assert marker_keys(bl) == []
    assert used(bl, U_BOB) == USD


def test_minute_and_hour_budgets_are_not_adjusted(make_limiter: Any, store: Store) -> None:
    limiter = make_limiter("""
timezone: UTC
orgs:
  acme:
    limits: [{metric: cost, amount: "50", period: hour}]
    teams:
      eng:
        limits:
          - {metric: cost, amount: "100", period: day}
          - {metric: cost, amount: "50", period: hour}
""")
    spend(limiter, BOB, "10")
    adjust(limiter, store, U_BOB, -4 * USD)  # bob has no limit: the team's day budget moves
    team = {s.period: s.used for s in limiter.scope_status(TEAM)}
    assert team == {"day": 6 * USD, "hour": 10 * USD}
    with pytest.raises(InvalidInput, match="day, week or month limit on cost"):
        adjust(limiter, store, ORG, -USD)
    assert [a.scope for a in store.adjustments("acme", DAY, DAY)] == [U_BOB]


# ------------------------------------------------------------------ clamping


def test_a_credit_stops_at_zero_usage_everywhere_and_sql_keeps_what_was_applied(
        bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "5")
    spend(bl, ALICE, "30")
    out = adjust(bl, store, U_BOB, -8 * USD)
    assert live(bl, U_BOB, TEAM, ORG) == [0, 30 * USD, 30 * USD]
    (row,) = store.adjustments("acme", DAY, DAY)
    assert (row.amount, row.requested) == (-5 * USD, -8 * USD)
    assert (out.adjustment.amount, out.adjustment.requested) == (-5 * USD, -8 * USD)
    # nothing left to credit: recorded as a zero adjustment, counters unchanged
    assert adjust(bl, store, U_BOB, -USD).adjustment.amount == 0
    spend(bl, BOB, "3")  # usage after the credit counts in full
    before = live(bl, U_BOB, TEAM, ORG)
    assert before == [3 * USD, 33 * USD, 33 * USD]
    rec = Reconciler(bl, store)
    rec.run_once()
    bl.redis.flushall()
    rec.run_once()  # Redis lost everything: rebuilt from SQL
    assert live(bl, U_BOB, TEAM, ORG) == before


def test_a_credit_of_one_unit_with_nothing_used_applies_nothing(
        bl: BudgetLimiter, store: Store) -> None:
    # the smallest credit there is: with no usage anywhere it must not make a counter negative
    out = adjust(bl, store, U_BOB, -1)
    assert (out.adjustment.amount, out.adjustment.requested) == (0, -1)
    assert live(bl, U_BOB, TEAM, ORG) == [0, 0, 0]


# ------------------------------------------------------------------ idempotency, ordering


def test_a_retry_with_the_same_id_is_a_duplicate(bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "25")
    first = adjust(bl, store, U_BOB, -10 * USD, adjustment_id="refund-1")
    again = adjust(bl, store, U_BOB, -10 * USD, adjustment_id="refund-1")
    assert (first.status, again.status) == ("applied", "duplicate")
    assert again.adjustment == first.adjustment
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3
    assert [a.id for a in store.adjustments("acme", DAY, DAY)] == ["refund-1"]
    with pytest.raises(AdjustmentConflict, match="refund-1"):
        adjust(bl, store, U_BOB, -20 * USD, adjustment_id="refund-1")
    ttl = bl.redis.pttl(bl.keys.adjustment("acme", "refund-1"))
    assert ttl >= bl.policy.idempotency_seconds * 1000
    # once recorded, the marker is not needed any more: the record answers
    bl.redis.delete(bl.keys.adjustment("acme", "refund-1"))
    assert adjust(bl, store, U_BOB, -10 * USD, adjustment_id="refund-1").status == "duplicate"
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3
    assert first.adjustment.id == "refund-1"
    assert adjust(bl, store, U_BOB, -USD).adjustment.id.startswith("adj_")


class FailingStore:
    """A store whose adjustment writes fail (the database went away after Redis)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def add_adjustment(self, adj: Adjustment) -> str:
        raise OperationalError("INSERT INTO bl_adjustments", {}, Exception("disk I/O error"))


def test_sql_failing_after_redis_names_the_id_and_the_retry_completes_it(
        bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "25")
    with pytest.raises(AdjustmentIncomplete, match="retry") as info:
        adjust(bl, FailingStore(store), U_BOB, -10 * USD)
    adj_id = info.value.adjustment_id
    assert adj_id in str(info.value)
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3
    assert store.adjustment(adj_id) is None
    with pytest.raises(AdjustmentConflict):  # the marker also refuses another operation
        adjust(bl, store, U_BOB, -11 * USD, adjustment_id=adj_id)
    retry = adjust(bl, store, U_BOB, -10 * USD, adjustment_id=adj_id)
    assert (retry.status, retry.adjustment.amount) == ("duplicate", -10 * USD)
    # recorded with the time (and day) Redis applied it, from the marker
    assert (retry.adjustment.at_ms, retry.adjustment.day) == (bl.clock(), "2026-03-10")
    assert store.adjustment(adj_id) == retry.adjustment
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3  # applied once


@pytest.mark.redis
def test_redis_down_writes_nothing(store: Store, clock: Any) -> None:
    with dead_port() as port:
        down = BudgetLimiter(parse_policy(POLICY), f"redis://127.0.0.1:{port}/0",
                             clock=clock, timeout=0.5)
        try:
            with pytest.raises(UNAVAILABLE):
                adjust(down, store, U_BOB, -10 * USD)
        finally:
            down.close()
    assert store.adjustments("acme", "2000-01-01", "2100-01-01") == []


# ------------------------------------------------------------------ restore


def test_a_credit_before_the_first_flush_survives_the_first_contact(
        bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "25")
    adjust(bl, store, U_BOB, -10 * USD)
    rec = Reconciler(bl, store)
    rec.run_once()  # first contact: rebuilds from SQL (empty) + ledger (25) + credit (-10)
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3
    bl.redis.flushall()
    rec.run_once()
    assert live(bl, U_BOB, TEAM, ORG) == [15 * USD] * 3


def test_restore_applies_an_adjustment_to_every_affected_counter_of_its_window(
        bl: BudgetLimiter, store: Store, clock: Any) -> None:
    rec = Reconciler(bl, store)
    spend(bl, BOB, "25")
    adjust(bl, store, U_BOB, -10 * USD)  # day 1: bob, team (day) and org (month)
    rec.run_once()
    clock.advance(86_400)
    spend(bl, BOB, "4")
    adjust(bl, store, U_CAROL, 3 * USD)  # a debit of a user without any usage
    before = live(bl, U_BOB, U_CAROL, TEAM, ORG)
    assert before == [4 * USD, 3 * USD, 7 * USD, 22 * USD]
    rec.run_once()
    bl.redis.flushall()
    assert rec.run_once().restored == ["acme"]
    assert live(bl, U_BOB, U_CAROL, TEAM, ORG) == before


# ------------------------------------------------------------------ reports


def test_reports_agree_with_the_live_counters(bl: BudgetLimiter, store: Store) -> None:
    spend(bl, BOB, "25")
    spend(bl, ALICE, "5")
    adjust(bl, store, U_BOB, -10 * USD)
    adjust(bl, store, TEAM, -2 * USD)  # the team as a whole, no user's
    adjust(bl, store, ORG, 1 * USD)  # the org as a whole, no team's
    Reconciler(bl, store).run_once()
    bob, alice, team, org = live(bl, U_BOB, U_ALICE, TEAM, ORG)
    assert (bob, alice, team, org) == (15 * USD, 5 * USD, 18 * USD, 19 * USD)
    users = {(r["team"], r["user"]): r["cost"] for r in cost_by_user(store, "acme", DAY, DAY)}
    assert users == {("eng", "bob"): bob, ("eng", "alice"): alice,
                     ("eng", "(adjustment)"): -2 * USD, ("(adjustment)", ""): USD}
    teams = {r["team"]: r["cost"] for r in cost_by_team(store, "acme", DAY, DAY)}
    assert teams == {"eng": team, "(adjustment)": USD}
    assert sum(teams.values()) == org
    agents = {r["agent"]: r["cost"] for r in usage_by_agent(store, "acme", DAY, DAY)}
    assert agents == {"gpt": 30 * USD, "(adjustment)": -11 * USD}
    assert sum(agents.values()) == org
    for scope, value in ((U_BOB, bob), (TEAM, team), (ORG, org)):
        assert trend(store, Scope.parse(scope), Metric.COST, "day", DAY, DAY) == [(DAY, value)]
    assert trend(store, Scope.parse(ORG), Metric.COST, "month", "2026-03-01",
                 "2026-03-31") == [("2026-03", org)]


@pytest.mark.redis
def test_the_usage_endpoint_agrees_with_the_live_counters(fresh_redis: RedisServer,
                                                          store: Store, clock: Any) -> None:
    limiter = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    spend(limiter, BOB, "25")
    adjust(limiter, store, U_BOB, -10 * USD)
    Reconciler(limiter, store).run_once()
    assert live(limiter, U_BOB, TEAM) == [15 * USD] * 2
    app = create_app(ServerConfig(redis_url=fresh_redis.url), policy=parse_policy(POLICY),
                     clock=clock, store=store)
    try:
        with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
            q = {"org": "acme", "from": DAY, "to": DAY}
            rows = client.get("/v1/usage", params={**q, "by": "user"}).json()["rows"]
            assert [(r["user"], r["cost"]) for r in rows] == [("bob", "15.000000")]
            series = client.get("/v1/usage", params={**q, "by": "trend",
                                                     "scope": TEAM}).json()["series"]
            assert series == [{"period": DAY, "value": "15.000000"}]
    finally:
        limiter.close()


# ------------------------------------------------------------------ the store


def test_the_store_keeps_applied_and_requested_and_refuses_a_reused_id(store: Store) -> None:
    adj = Adjustment(org="acme", scope=U_BOB, metric="cost", amount=-5, day=DAY, who="ops",
                     why="refund", at_ms=1, id="a1", requested=-8)
    assert store.add_adjustment(adj) == "a1"
    assert store.add_adjustment(adj) == "a1"  # a retry
    assert store.adjustment("a1") == adj and store.adjustment("nope") is None
    with pytest.raises(AdjustmentConflict, match="a1"):
        store.add_adjustment(Adjustment(org="acme", scope=U_BOB, metric="cost", amount=-8,
                                        day=DAY, who="ops", why="refund", at_ms=1, id="a1"))
    assert store.adjustments("acme", DAY, DAY) == [adj]


def test_migration_2_keeps_adjustments_recorded_before_it(store_url: Any) -> None:
    s = Store(store_url.url, schema=store_url.schema)
    try:
        assert s.migrate(MIGRATIONS[:1]) == 1
        with s._write() as conn:
            conn.execute(text(
                "INSERT INTO bl_adjustments (id, org, scope, metric, amount, day, who, why, "
                "at_ms) VALUES ('old', 'acme', 'org:acme', 'cost', -7, '2026-01-02', 'ops', "
                "'x', 5)"))
        assert s.migrate() == len(MIGRATIONS)
        old = s.adjustment("old")
        assert old is not None and (old.amount, old.requested) == (-7, -7)
    finally:
        s.close()


# ------------------------------------------------------------------ the command line


@pytest.fixture
def cli_env(fresh_redis: RedisServer, tmp_path: Path) -> dict[str, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return {"BUDGETLIMITER_REDIS": fresh_redis.url, "BUDGETLIMITER_POLICY": str(policy),
            "BUDGETLIMITER_DB": f"sqlite:///{tmp_path}/bl.db"}


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, ["--format", "json", *args], env=env,
                              catch_exceptions=False)


def cli_used(env: dict[str, str], scope: str) -> str:
    rows = json.loads(cli(env, "status", scope).output)
    used_: str = next(r["used"] for r in rows if r["metric"] == "cost")
    return used_


@pytest.mark.redis
def test_cli_the_reported_case_stays_at_15(cli_env: dict[str, str]) -> None:
    rec = cli(cli_env, "record", "--org", "acme", "--team", "eng", "--user", "bob", "--agent",
              "gpt", "--cost", "25")
    assert rec.exit_code == 0, rec.output
    out = cli(cli_env, "adjust", U_BOB, "--metric", "cost", "--amount", "-10", "--why",
              "refund", "--id", "r-1")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)[0]
    assert (doc["id"], doc["status"], doc["requested"], doc["applied"]) == (
        "r-1", "applied", "-10.000000", "-10.000000")
    assert cli_used(cli_env, U_BOB) == "15.000000"
    assert cli(cli_env, "reconcile", "--once").exit_code == 0
    assert [cli_used(cli_env, s) for s in (U_BOB, TEAM, ORG)] == ["15.000000"] * 3
    again = json.loads(cli(cli_env, "adjust", U_BOB, "--metric", "cost", "--amount", "-10",
                           "--why", "refund", "--id", "r-1").output)[0]
    assert (again["status"], again["applied"]) == ("duplicate", "-10.000000")
    assert cli_used(cli_env, U_BOB) == "15.000000"


@pytest.mark.redis
def test_cli_adjust_errors_exit_with_one_line(cli_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in cli_env.items():
        monkeypatch.setenv(k, v)

    def exit_code(*args: str) -> int:
        with pytest.raises(SystemExit) as info:
            run(list(args))
        code: int = info.value.code  # type: ignore[assignment]
        return code

    assert exit_code("adjust", TEAM, "--metric", "total_tokens", "--amount", "-5", "--why",
                     "x") == 2
    assert "total_tokens" in capsys.readouterr().err
    with dead_port() as port:
        monkeypatch.setenv("BUDGETLIMITER_REDIS", f"redis://127.0.0.1:{port}/0")
        assert exit_code("adjust", U_BOB, "--metric", "cost", "--amount", "-5", "--why",
                         "x") == 3
    err = capsys.readouterr().err
    assert err.startswith("error: Redis unreachable") and err.count("\n") == 1
    st = Store(cli_env["BUDGETLIMITER_DB"])
    try:
        assert st.adjustments("acme", "2000-01-01", "2100-01-01") == []
    finally:
        st.close()
