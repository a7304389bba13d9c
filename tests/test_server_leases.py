"""The sidecar with ``--leases``: checks admitted in-process, settled by id in-process, and
every lease handed back when the server stops (also on SIGTERM under load), so that Redis
counts exactly what was committed. Real redis-server, real uvicorn, real HTTP."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from budgetlimiter import BudgetLimiter, LeaseConfig, Metric, Subject, load_policy
from budgetlimiter.cli.context import Context
from budgetlimiter.cli.serve import serve
from budgetlimiter.durable.store.sql import Store
from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.testing import LiveServer, free_port

from .cli_proc import child_env, command
from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "1000", period: month}
    teams:
      eng:
        limits:
          - {metric: cost, amount: "500", period: day}
"""
MINIMAL = {"Prefer": "return=minimal"}
#: 2000 input tokens estimated, 1000 used: 0.001 USD = 1000 micro-USD per committed call
ESTIMATE = {"input_tokens": 2000}
ACTUAL = {"input_tokens": 1000}
COST_MICROS = 1000


def subject(user: str) -> dict[str, str]:
    return {"org": "acme", "team": "eng", "user": user, "agent": "gpt"}


def used_micros(url: str, policy: Path) -> int:
    """What Redis counts as used in the org's monthly cost budget."""
    limiter = BudgetLimiter(load_policy(policy), url)
    try:
        org = [s for s in limiter.status(Subject("acme", "gpt", team="eng", user="x"))
               if str(s.scope) == "org:acme" and s.metric is Metric.COST]
        assert org and org[0].used is not None
        return int(org[0].used)
    finally:
        limiter.close()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_leased_checks_are_settled_by_id_in_process_when_serve_has_leases(
        fresh_redis: RedisServer, policy_file: Path) -> None:
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(policy_file),
                                  redis_timeout=1.0, lease_calls=8, lease_seconds=60))
    live = LiveServer(app, http="httptools").start()
    try:
        with httpx.Client(base_url=live.url, timeout=10) as client:
            body = {"subject": subject("alice"), "estimate": ESTIMATE}
            docs = [client.post("/v1/check", json=body, headers=MINIMAL).json()
                    for _ in range(5)]
            assert all(d["allowed"] for d in docs)
            assert set(docs[0]) == {"allowed", "reservation_id", "retry_after", "blocked_by"}
            limiter = app.state.server.limiter
            assert limiter.engine.leases.local_admits >= 4  # the first one opened the lease
            ids = [d["reservation_id"] for d in docs]
            for rid in ids[:3]:
                got = client.post("/v1/commit", json={"org": "acme", "reservation_id": rid,
                                                      "subject": subject("alice"),
                                                      "actual": ACTUAL})
                assert got.status_code == 200 and got.json()["status"] == "committed"
            again = client.post("/v1/commit", json={"org": "acme", "reservation_id": ids[0],
                                                    "subject": subject("alice"),
                                                    "actual": ACTUAL})
            assert again.json()["status"] == "duplicate"
            released = client.post("/v1/release", json={"org": "acme",
                                                         "reservation_id": ids[3]})
            assert released.json()["status"] == "released"
            late = client.post("/v1/commit", json={"org": "acme", "reservation_id": ids[3],
                                                   "subject": subject("alice"),
                                                   "actual": ACTUAL})
            assert late.status_code == 409 and late.json()["code"] == "reservation_released"
            # nothing reached Redis yet: the usage is in the lease
            assert used_micros(fresh_redis.url, policy_file) == 0
    finally:
        live.stop()  # the lifespan's shutdown hands every lease back
    assert used_micros(fresh_redis.url, policy_file) == 3 * COST_MICROS


def _load(url: str, user: str, stop: threading.Event, out: dict[str, Any],
          lock: threading.Lock) -> None:
    """check -> commit in a loop until the server goes away; counts committed calls."""
    committed = 0
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                doc = client.post("/v1/check", json={"subject": subject(user),
                                                     "estimate": ESTIMATE},
                                  headers=MINIMAL).json()
                assert doc["allowed"], doc
                got = client.post("/v1/commit", json={
                    "org": "acme", "reservation_id": doc["reservation_id"],
                    "subject": subject(user), "actual": ACTUAL})
                assert got.status_code == 200, got.text
                assert got.json()["status"] == "committed", got.text
                committed += 1
                with lock:
                    out["live"] = out.get("live", 0) + 1
    except httpx.ConnectError:
        pass  # the server stopped accepting: nothing of this request reached it
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # uvicorn closed the idle keep-alive connection as the request went out: it was
        # never read (if it had been, the totals below would be off)
        with lock:
            out["cut"] = out.get("cut", 0) + 1
    except Exception as exc:  # anything else fails the test (threads swallow exceptions)
        with lock:
            out.setdefault("failures", []).append(repr(exc)[:300])
    with lock:
        out["committed"] = out.get("committed", 0) + committed


@pytest.mark.timeout(120)
def test_sigterm_hands_every_lease_back_when_serve_has_leases_under_load(
        fresh_redis: RedisServer, policy_file: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command("--redis", fresh_redis.url, "--policy", str(policy_file), "serve",
                    "--port", str(port), "--leases", "16,30"),
            env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the sidecar did not become ready"
            time.sleep(0.05)
        stop = threading.Event()
        out: dict[str, Any] = {}
        lock = threading.Lock()
        threads = [threading.Thread(target=_load, args=(url, f"u{i % 4}", stop, out, lock))
                   for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while out.get("live", 0) < 64 and time.monotonic() < deadline:
            time.sleep(0.05)  # several leases opened, used and returned (16 calls each)
        proc.send_signal(signal.SIGTERM)  # under load: checks and commits in flight
        for t in threads:
            t.join(30)
        stop.set()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # uvicorn exits by re-raising the signal it caught, after the graceful shutdown
    err = log.read_text()
    assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "sidecar stopped" in err, err[-2000:]
    assert not out.get("failures"), out
    assert out["committed"] >= 64, out
    assert used_micros(fresh_redis.url, policy_file) == out["committed"] * COST_MICROS


@pytest.mark.parametrize(("value", "why"), [
    ("abc", "expected CALLS[,SECONDS]"), ("1", "lease calls must be an integer >= 2"),
    ("64,0", "lease seconds must be in"), ("64,x", "expected CALLS[,SECONDS]"),
])
def test_serve_refuses_bad_leases_with_exit_2_when_given(policy_file: Path, value: str,
                                                          why: str) -> None:
    obj = Context("memory://", None, str(policy_file), "table")
    result = CliRunner().invoke(serve, ["--leases", value], obj=obj)
    assert result.exit_code == 2 and why in result.output, result.output


def test_serve_passes_leases_to_the_limiter_when_given(
        policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client
    import uvicorn

    from budgetlimiter.server import logs

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(logs, "setup_logging", lambda level: None)
    monkeypatch.setattr(prometheus_client, "disable_created_metrics", lambda: None)
    obj = Context("memory://", None, str(policy_file), "table")
    result = CliRunner().invoke(serve, [], obj=obj, env={"BUDGETLIMITER_LEASES": "32,0.5"})
    assert result.exit_code == 0, result.output
    config = seen["app"].state.server.config
    assert config.lease_config == LeaseConfig(calls=32, seconds=0.5)


@pytest.mark.timeout(120)
def test_sigterm_with_db_gets_leased_usage_into_sql_when_serve_has_leases(
        fresh_redis: RedisServer, policy_file: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'bl.db'}"
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command("--redis", fresh_redis.url, "--db", db, "--policy", str(policy_file),
                    "serve", "--port", str(port), "--leases", "16,60",
                    "--reconcile-interval", "0.5"),
            env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the sidecar did not become ready"
                time.sleep(0.05)
            for _ in range(10):
                doc = client.post("/v1/check", json={"subject": subject("alice"),
                                                     "estimate": ESTIMATE},
                                  headers=MINIMAL).json()
                got = client.post("/v1/commit", json={
                    "org": "acme", "reservation_id": doc["reservation_id"],
                    "subject": subject("alice"), "actual": ACTUAL})
                assert got.json()["status"] == "committed", got.text
        time.sleep(1.0)  # a reconcile pass or two: the usage is still in the lease
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "sidecar stopped" in log.read_text(), log.read_text()[-2000:]
    assert used_micros(fresh_redis.url, policy_file) == 10 * COST_MICROS
    store = Store(db)
    try:
        rows = store.usage_rows("acme", "0000-01-01", "9999-12-31")
        assert sum(r.input_tokens for r in rows) == 10 * ACTUAL["input_tokens"]
    finally:
        store.close()
