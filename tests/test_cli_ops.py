"""Operator commands end to end against a real redis-server and SQLite: status --tree, top,
adjust, reconcile, report, alerts, restore; and `top --watch` in a real terminal (tmux)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from budgetlimiter import BudgetLimiter, Subject, Usage, load_policy
from budgetlimiter.cli import main

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "examples" / "policy.yaml")
ALICE = Subject("acme", "gpt-4o", team="eng", user="alice")
DAN = Subject("acme", "claude-sonnet", team="research", user="dan")


@pytest.fixture
def env(fresh_redis, tmp_path):
    return {"BUDGETLIMITER_REDIS": fresh_redis.url, "BUDGETLIMITER_POLICY": POLICY,
            "BUDGETLIMITER_DB": f"sqlite:///{tmp_path}/bl.db"}


@pytest.fixture
def limiter(fresh_redis):
    bl = BudgetLimiter(load_policy(POLICY), fresh_redis.url, timeout=2)
    yield bl
    bl.close()


def cli(env, *args):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def test_status_tree_in_every_format(env, limiter):
    limiter.record(ALICE, Usage(input_tokens=100_000))  # $0.25
    limiter.record(DAN, Usage(input_tokens=100_000))  # $0.30: research ($0.50/day) at 60 %
    table = cli(env, "status", "org:acme", "--tree")
    assert table.exit_code == 0
    assert "org:acme/team:eng/user:alice" in table.output
    assert "org:acme/team:research" in table.output
    rows = json.loads(cli(env, "--format", "json", "status", "org:acme", "--tree").output)
    research = next(r for r in rows if r["scope"] == "org:acme/team:research")
    assert (research["used"], research["limit"], research["percent"]) == ("0.300000",
                                                                            "0.500000", 60.0)
    assert research["state"] == "ok" and research["resets_at"]
    csv_out = cli(env, "--format", "csv", "status", "org:acme/team:research").output
    assert csv_out.splitlines()[0] == (
        "scope,metric,period,used,reserved,limit,burst,remaining,percent,resets_at,exhausts,mode,state")
    assert "\x1b[" not in table.output  # plain when not a terminal


def test_status_shows_blocked_state(env, limiter):
    limiter.record(DAN, Usage(input_tokens=200_000))  # $0.60 > $0.50
    rows = json.loads(cli(env, "--format", "json", "status", "org:acme/team:research").output)
    assert rows[0]["state"] == "blocked"


def test_top_orders_by_percent(env, limiter):
    limiter.record(DAN, Usage(input_tokens=150_000))
    limiter.record(ALICE, Usage(input_tokens=1_000))
    rows = json.loads(cli(env, "--format", "json", "top", "-n", "3").output)
    assert rows[0]["scope"] == "org:acme/team:research/user:dan"
    assert rows[0]["percent"] >= rows[1]["percent"] >= rows[2]["percent"]


def test_adjust_is_audited_and_applied(env, limiter):
    limiter.record(DAN, Usage(input_tokens=100_000))  # $0.30
    out = cli(env, "--format", "json", "adjust", "org:acme/team:research", "--metric", "cost",
              "--amount", "-0.25", "--why", "refund for a failed batch", "--who", "ops")
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output)[0]
    assert rec["who"] == "ops" and rec["id"].startswith("adj_")
    team = limiter.scope_status("org:acme/team:research")
    assert next(s for s in team if s.metric.value == "cost").used == 50_000
    bad = CliRunner().invoke(main, ["adjust", "org:acme", "--metric", "cost", "--amount", "x",
                                    "--why", "w"], env=env)
    assert bad.exit_code != 0


def test_reconcile_report_alerts_restore(env, limiter, fresh_redis):
    for i in range(5):
        limiter.record(DAN, Usage(input_tokens=20_000), request_id=f"d{i}")  # 5 x $0.06
        limiter.record(ALICE, Usage(input_tokens=40_000, output_tokens=1000),
                       request_id=f"a{i}")
    once = cli(env, "reconcile", "--once")
    assert once.exit_code == 0 and "flushes 1" in once.output
    from budgetlimiter.durable.store.sql import Store

    st = Store(env["BUDGETLIMITER_DB"])
    in_force = st.policy_in_force()
    st.close()
    assert in_force is not None and in_force[1] == POLICY
    day = time.strftime("%Y-%m-%d", time.localtime())
    teams = json.loads(cli(env, "--format", "json", "report", "teams", "--org", "acme",
                           "--from", "2020-01-01").output)
    assert {t["team"]: t["cost"] for t in teams} == {"eng": "0.550000", "research": "0.300000"}
    agents = cli(env, "report", "agents", "--org", "acme", "--from", "2020-01-01")
    assert "gpt-4o" in agents.output and "█" in agents.output
    trend = cli(env, "report", "trend", "org:acme/team:research", "--from", "2020-01-01",
                "--granularity", "month")
    assert "0.300000" in trend.output
    listed = json.loads(cli(env, "--format", "json", "alerts", "list").output)
    assert any(r["scope"] == "org:acme/team:research" and r["threshold"] == 50 for r in listed)
    assert all(r["state"] == "delivered" for r in listed)  # the log sink delivered them
    fresh_redis.client().flushall()
    restored = cli(env, "restore")
    assert restored.exit_code == 0 and "restored 1 orgs" in restored.output
    team = limiter.scope_status("org:acme/team:research")
    assert next(s for s in team if s.metric.value == "cost").used == 300_000
    del day


def test_database_unreachable_is_one_line(env, tmp_path):
    from budgetlimiter.cli import run

    env = {**env, "BUDGETLIMITER_DB": "postgresql://nobody@127.0.0.1:1/none"}
    code = subprocess.run([sys.executable, "-c", "from budgetlimiter.cli import run; run()",
                           "report", "teams", "--org", "acme"], env={**env, "PATH": ""},
                          capture_output=True, text=True)
    assert code.returncode == 3
    assert code.stderr.startswith("error: database unreachable") and \
        code.stderr.count("\n") == 1
    del run


def test_top_watch_updates_in_a_terminal(env, limiter, tmp_path):
    if shutil.which("tmux") is None:  # a missing tool fails (make test installs it)
        pytest.fail("tmux is not installed: .ci/system-deps installs it")
    session = f"bltop{int(time.time() * 1000) % 100000}"
    cmd = (f"{sys.executable} -c 'from budgetlimiter.cli import run; run()' "
           "top --watch --interval 0.3")
    envs = " ".join(f"{k}={v}" for k, v in env.items())
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "40",
                    f"env {envs} {cmd}"], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        deadline = time.time() + 15
        while "budgetlimiter top" not in screen() and time.time() < deadline:
            time.sleep(0.1)
        assert "org:acme/team:research/user:dan" not in screen()
        limiter.record(DAN, Usage(input_tokens=150_000))
        while "org:acme/team:research/user:dan" not in screen() and time.time() < deadline:
            time.sleep(0.1)
        shown = screen()
        assert "org:acme/team:research/user:dan" in shown
        (tmp_path / "top-screen.txt").write_text(shown)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])


DATA_COMMANDS = [
    ("status", "org:acme", "--tree"),
    ("top", "-n", "5", "--interval", "0.1"),
    ("top", "--org", "acme", "--interval", "0"),
    ("record", "--org", "acme", "--team", "eng", "--user", "alice", "--agent", "gpt-4o",
     "--input-tokens", "10"),
    ("reconcile", "--once"),
    ("restore",),
    ("alerts", "requeue"),
    ("policy", "validate", POLICY),
    ("check", "--org", "acme", "--team", "eng", "--user", "alice", "--agent", "gpt-4o",
     "--input-tokens", "10"),
    ("policy", "show", "--org", "acme", "--team", "eng", "--user", "alice", "--agent",
     "copilot"),
    ("report", "agents", "--org", "acme", "--from", "2020-01-01"),
    ("report", "teams", "--org", "acme", "--from", "2020-01-01"),
    ("report", "users", "--org", "acme", "--team", "eng", "--from", "2020-01-01"),
    ("report", "trend", "org:acme", "--granularity", "week", "--from", "2026-10-01"),
    ("alerts", "list"),
    ("adjust", "org:acme/team:eng", "--metric", "invocations", "--amount", "2", "--why",
     "test"),
]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
@pytest.mark.parametrize("args", DATA_COMMANDS, ids=lambda a: "-".join(a[:3]))
def test_every_data_command_in_every_format(env, limiter, fmt, args):
    limiter.record(ALICE, Usage(input_tokens=100_000), request_id="seed-a")
    limiter.record(DAN, Usage(input_tokens=100_000), request_id="seed-d")
    assert cli(env, "reconcile", "--once").exit_code == 0
    result = cli(env, "--format", fmt, *args)
    assert result.exit_code == 0, result.output
    out = result.stdout.strip()  # (restore's progress goes to stderr)
    assert out
    if fmt == "json":
        json.loads(out)
    elif fmt == "csv":
        header = out.splitlines()[0]
        assert "," in header or args[0] == "alerts", out  # requeue has one column
        assert "\x1b[" not in out and "█" not in out and "(nothing)" not in out


@pytest.mark.parametrize("args,code", [
    (("status", "planet:x"), 2),
    (("status", "org:acme", "--bogus"), 2),
    (("report", "teams", "--org", "acme", "--from", "yesterday"), 2),
    (("report", "trend", "org:acme", "--from", "2026-02-01", "--to", "2026-01-01"), 2),
    (("adjust", "org:acme", "--metric", "cost", "--amount", "NaN", "--why", "x"), 2),
    (("check", "--org", "acme", "--agent", "no-such-model-xyz", "--input-tokens", "-5"), 2),
    (("alerts", "list", "--state", "lost"), 2),
])
def test_error_paths_exit_codes(env, args, code, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from budgetlimiter.cli import run

    with pytest.raises(SystemExit) as info:
        run(list(args))
    assert info.value.code == code
