"""``budgetlimiter limits set|unset|list``, ``policy history|rollback`` and ``audit``: the real
console script on a real redis-server, with a library client watching the change."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage

from .cli_proc import Cli, one_error_line
from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1"}}
orgs:
  acme:
    teams:
      eng:
        limits: [{metric: cost, amount: "100", period: day}]
        rates: [{metric: requests, limit: 20, per: second}]
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")


@pytest.fixture
def cli(fresh_redis: RedisServer, tmp_path: Path) -> Cli:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return Cli(cwd=tmp_path, redis=fresh_redis.url, db=f"sqlite:///{tmp_path / 'cli.db'}",
               policy=str(tmp_path / "policy.yaml"))


def test_a_limit_set_from_the_cli_is_enforced_by_a_running_client(cli: Cli) -> None:
    client = BudgetLimiter(cli.policy or "", cli.redis or "")
    try:
        assert client.check(ALICE, Usage(input_tokens=2_000_000), dry_run=True).allowed
        done = cli("limits", "set", "org:acme/team:eng", "--metric", "cost", "--amount", "1",
                   "--period", "day", "--why", "cut", "--who", "ops")
        assert done.code == 0, done.err
        assert "cost 1 per day hard (override v1.limits[0])" in done.out
        client.run(client.engine.poll_overrides())  # what its timer does every second
        assert not client.check(ALICE, Usage(input_tokens=2_000_000), dry_run=True).allowed
    finally:
        client.close()
    status = cli("--format", "json", "status", "org:acme/team:eng").json()
    assert [(s["metric"], s["limit"]) for s in status if s["period"] == "day"] == [
        ("cost", "1.000000")]  # a new process shows the limits in force
    listed = cli("limits", "list")
    assert "override v1.limits[0]" in listed.out and '"1"' in listed.out
    shown = cli("--format", "json", "policy", "show", "--org", "acme", "--team", "eng",
                "--agent", "gpt").json()
    assert shown["overrides_version"] == 1


def test_unset_history_rollback_and_audit(cli: Cli) -> None:
    assert cli("limits", "unset", "org:acme/team:eng", "--metric", "requests", "--per",
               "second", "--why", "no rate", "--who", "ops").code == 0
    history = cli("policy", "history")
    assert history.out.splitlines()[1].split()[:3] == ["1", "override.unset",
                                                       "org:acme/team:eng"]
    assert cli("policy", "rollback", "0", "--why", "undo", "--who", "ops").code == 0
    audit = cli("--format", "json", "audit", "--org", "acme").json()
    assert [(e["action"], e["who"], e["version"]) for e in audit] == [
        ("override.unset", "ops", 1), ("policy.rollback", "ops", 2)]
    assert audit[0]["before"] == [
        "cost 100 per day hard (orgs.acme.teams.eng.limits[0])",
        "rate invocations 20 per second burst 20 (orgs.acme.teams.eng.rates[0])"]
    assert audit[0]["after"] == ["cost 100 per day hard (orgs.acme.teams.eng.limits[0])"]


@pytest.mark.parametrize(("args", "message"), [
    (("set", "org:acme/team:eng", "--metric", "cost", "--amount", "-5", "--period", "day"),
     "error: limits[0].amount: must not be negative (got '-5')"),
    (("set", "org:acem", "--metric", "cost", "--amount", "5", "--period", "day"),
     "error: scope: org 'acem' is not declared in the policy"),
    (("unset", "org:acme/team:eng", "--metric", "invocations", "--period", "day"),
     "error: limit: org:acme/team:eng has no invocations per day limit in force"),
    (("unset", "org:acme/team:eng", "--all"),
     "error: scope: org:acme/team:eng has no override to remove"),
])
def test_bad_changes_exit_2_with_one_line_and_store_nothing(
        cli: Cli, fresh_redis: RedisServer, args: tuple[str, ...], message: str) -> None:
    done = cli("limits", *args, "--why", "x")
    assert done.code == 2
    assert one_error_line(done).startswith(message)
    assert cli("policy", "history").out == "no override versions yet\n"
    with fresh_redis.client() as r:
        assert r.get("bl:v2:{!overrides}:ver") is None


def test_restore_publishes_the_overrides_again_after_redis_lost_them(
        cli: Cli, fresh_redis: RedisServer) -> None:
    assert cli("limits", "set", "org:acme/team:eng", "--metric", "cost", "--amount", "1",
               "--period", "day", "--why", "cut").code == 0
    with fresh_redis.client() as r:
        r.flushall()
        assert cli("restore").code == 0
        assert r.get("bl:v2:{!overrides}:ver") == b"1"


def test_a_change_redis_did_not_take_exits_3_naming_the_stored_version(cli: Cli) -> None:
    down = Cli(cwd=cli.cwd, redis="redis://127.0.0.1:1/0", db=cli.db, policy=cli.policy)
    done = down("limits", "set", "org:acme", "--metric", "cost", "--amount", "5", "--period",
                "day", "--why", "x")
    assert done.code == 3
    assert one_error_line(done).startswith("error: stored as override version 1 but not "
                                           "published (Redis unreachable")
    assert cli("policy", "history").out.splitlines()[1].split()[0] == "1"
