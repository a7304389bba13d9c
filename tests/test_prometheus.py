"""deploy/prometheus and deploy/grafana-dashboard.json against Debian's real ``prometheus``:
promtool checks and unit-tests the rules, and a real Prometheus scrapes a real sidecar
process on a real redis-server until the "scope blocked" rule fires for the scope that usage
blocked. Missing prometheus/promtool is a failure, never a skip (.ci/system-deps installs
them)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from budgetlimiter.server.testing import free_port

from .cli_proc import child_env, command
from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "10", period: month}]
    teams:
      eng:
        limits: [{metric: cost, amount: "0.001", period: day}]
"""
ALICE = {"org": "acme", "team": "eng", "user": "alice", "agent": "gpt"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package "
                    "(.ci/system-deps does)")
    return path


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=RULES.parent,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def wait_for(what: str, probe: Any, timeout: float = 90.0) -> Any:
    """Poll ``probe`` until it returns something truthy (not a timing assertion: the bound
    only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, httpx.HTTPError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def running(name: str, args: list[str], port: int, ready: str, log: Path,
            env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``args`` (listening on ``port``) until the block ends; yields its base URL once
    ``ready`` answers 200. Its stderr goes to ``log``."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(name, lambda: httpx.get(url + ready).status_code == 200)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait(10)


@pytest.fixture
def sidecar(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A real ``budgetlimiter serve`` process; yields its base URL."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    args = command("--redis", fresh_redis.url, "--policy", str(policy), "serve", "--port",
                   str(port))
    with running("the sidecar", args, port, "/readyz", tmp_path / "sidecar.log",
                 child_env()) as url:
        yield url


@pytest.fixture
def prometheus(sidecar: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the sidecar every second with deploy/'s rules; yields its
    API base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "budgetlimiter", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [sidecar.split("//")[1]]}]}],
    }))
    args = [tool("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
    with running("prometheus", args, port, "/-/ready", tmp_path / "prometheus.log") as url:
        yield url


def firing(prom: str, name: str) -> list[dict[str, Any]]:
    alerts = httpx.get(prom + "/api/v1/alerts").json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def query(prom: str, expr: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(prom + "/api/v1/query", params={"query": expr}).json()
    return doc


@pytest.mark.redis
def test_real_prometheus_fires_scope_blocked_once_usage_blocks_a_scope(
        sidecar: str, prometheus: str) -> None:
    # the target is up and nothing is blocked yet
    wait_for("a scrape", lambda: query(prometheus, "up")["data"]["result"])
    assert firing(prometheus, "BudgetlimiterScopeBlocked") == []
    # $0.001 of the team's $0.001 day: the team blocks
    body = {"subject": ALICE, "actual": {"input_tokens": 1000}}
    assert httpx.post(sidecar + "/v1/record", json=body).status_code == 200
    check = {"subject": ALICE, "estimate": {"input_tokens": 1, "output_tokens": 1}}
    assert httpx.post(sidecar + "/v1/check", json=check).json()["allowed"] is False
    (alert,) = wait_for("BudgetlimiterScopeBlocked firing",
                        lambda: firing(prometheus, "BudgetlimiterScopeBlocked"))
    assert alert["labels"]["scope"] == "org:acme/team:eng"
    assert alert["labels"]["metric"] == "cost" and alert["labels"]["period"] == "day"
    assert alert["annotations"]["summary"] == "org:acme/team:eng is blocked (cost per day)"
    # the dashboard's every query is valid PromQL on this Prometheus, and its metrics and the
    # rules' are ones the sidecar exports
    metrics = httpx.get(sidecar + "/metrics").text
    exported = {re.sub(r"_total$", "", n)
                for n in re.findall(r"^# TYPE (budgetlimiter_[a-z_]+) ", metrics, re.M)}
    used = set()
    for expr in dashboard_queries() + rule_queries():
        concrete = (expr.replace("$__rate_interval", "1m").replace('"$org"', '".*"'))
        doc = query(prometheus, concrete)
        assert doc["status"] == "success", (expr, doc)
        used |= {re.sub(r"_(total|bucket)$", "", n)
                 for n in re.findall(r"budgetlimiter_[a-z_]+", expr)}
    assert used <= exported, used - exported


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def rule_queries() -> list[str]:
    text = RULES.read_text()
    exprs = re.findall(r"expr: \|\n((?:          .*\n)+)|expr: (.+)", text)
    return [" ".join((block or line).split()) for block, line in exprs]


def test_the_grafana_dashboard_is_importable_json_on_the_sidecar_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "budgetlimiter" and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for t in p["targets"]:
            assert "budgetlimiter_" in t["expr"], p["title"]
