"""The CLI (click's CliRunner) against memory:// and a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from budgetlimiter.cli import main, run

ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "examples" / "policy.yaml")
ALICE = ["--org", "acme", "--team", "eng", "--user", "alice", "--agent", "gpt-4o"]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_demo_reports_admitted_blocked_and_thresholds():
    result = invoke("demo", "--invocations", "200")
    assert result.exit_code == 0
    out = result.output
    assert "Admitted" in out and "Blocked by" in out and "Thresholds crossed" in out
    assert "org:acme/team:research" in out


def test_policy_validate_ok_and_broken(tmp_path):
    assert invoke("policy", "validate", POLICY).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "orgs:\n  acme:\n    limits:\n      - {metric: cost, amount: '-5', period: day}\n")
    result = CliRunner().invoke(main, ["policy", "validate", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml:4" in result.output and "orgs.acme.limits[0].amount" in result.output


def test_policy_show_json():
    result = invoke("--policy", POLICY, "--format", "json", "policy", "show", *ALICE)
    data = json.loads(result.output)
    scopes = {s["scope"] for s in data["scopes"]}
    assert "org:acme/team:eng/user:alice" in scopes


@pytest.mark.redis
def test_check_record_status_against_real_redis(fresh_redis):
    env = {"BUDGETLIMITER_REDIS": fresh_redis.url, "BUDGETLIMITER_POLICY": POLICY}
    ok = invoke("check", *ALICE, "--input-tokens", "1000", env=env)
    assert ok.exit_code == 0 and "allowed" in ok.output
    rec = invoke("--format", "json", "record", *ALICE, "--input-tokens", "4000",
                 "--request-id", "r1", env=env)
    assert json.loads(rec.output)["status"] == "recorded"
    again = invoke("--format", "json", "record", *ALICE, "--input-tokens", "4000",
                   "--request-id", "r1", env=env)
    assert json.loads(again.output)["status"] == "duplicate"
    st = invoke("--format", "csv", "status", "org:acme/team:eng/user:alice", env=env)
    assert st.output.splitlines()[0].startswith("scope,metric,period,used,reserved,limit")
    denied = invoke("check", *ALICE, "--cost", "999", env=env)
    assert denied.exit_code == 1 and "denied" in denied.output


def test_unreachable_redis_is_one_line_and_exit_3(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        run(["--redis", "redis://127.0.0.1:1/0", "--policy", POLICY, "status", "org:acme"])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("error: Redis unreachable") and err.count("\n") == 1


def test_bad_id_is_exit_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        run(["--policy", POLICY, "check", "--org", "x" * 300, "--agent", "gpt-4o"])
    assert info.value.code == 2
    assert "org id is 300 characters long" in capsys.readouterr().err
