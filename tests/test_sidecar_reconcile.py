"""``budgetlimiter serve --db``: the sidecar reconciles and delivers alerts by itself, and many
sidecars on one Redis and one database reconcile each org once, handing it over when the holder
dies. Real processes (the console script), a real redis-server and a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from budgetlimiter.durable.alerts import generate_secret
from budgetlimiter.durable.store.sql import Store
from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.server.models import ReadyOut

from .cli_proc import ROOT, Cli, child_env, command
from .faults import FaultyProxy
from .servers import free_port
from .sqlstores import SqlUrl, postgres_schema
from .webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
KEYS = KeySpace()
POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme: {limits: [{metric: cost, amount: "1", period: day, thresholds: [50]}]}
  beta: {limits: [{metric: cost, amount: "1", period: day, thresholds: [50]}]}
"""
FAST = ("--reconcile-interval", "0.5", "--reconcile-lease", "3")


@pytest.fixture
def pg() -> Iterator[SqlUrl]:
    """A fresh PostgreSQL schema (the sidecars get it as ``postgresql://...?schema=``)."""
    with postgres_schema() as url:
        yield url


class Sidecar:
    """One ``budgetlimiter serve`` process on a free port, logging to a file."""

    def __init__(self, tmp: Path, redis_url: str, db: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp / f"sidecar-{self.port}.log"
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        cmd = command("--redis", redis_url, "--db", db, "--policy", str(policy), "serve",
                      "--port", str(self.port), *args)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=tmp, env=child_env(**(env or {})),
                                         stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait(lambda: self._up(), 60, f"sidecar on {self.port} did not start: {self.logs()}")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.logs()
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def record(self, org: str, user: str, tokens: int, request_id: str) -> None:
        body = {"subject": {"org": org, "user": user, "agent": "gpt"},
                "actual": {"input_tokens": tokens}, "request_id": request_id}
        reply = self.http.post("/v1/record", json=body)
        assert reply.status_code == 200 and reply.json()["status"] == "recorded", reply.text

    def reconcile(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get("/readyz").json()["reconcile"]
        return body

    def holds(self, org: str) -> bool:
        return any(o["org"] == org and o["held_here"] for o in self.reconcile()["orgs"])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        finally:
            self.http.close()


def wait(predicate: Callable[[], Any], timeout: float, message: str = "") -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took (fails after timeout:
    generous bounds, not timing assertions)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(message or f"not true within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def sql_tokens(db: SqlUrl, org: str) -> int:
    store = Store(db.url, schema=db.schema)
    try:
        store.migrate()
        return sum(r.input_tokens for r in store.usage_rows(org, "0000-01-01", "9999-12-31"))
    finally:
        store.close()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for s in started:
        s.stop(signal.SIGKILL)


def test_serve_db_alone_fills_usage_and_delivers_a_webhook(fresh_redis, pg, tmp_path, sidecars):
    secret = generate_secret()
    with WebhookReceiver(secret) as receiver:
        side = Sidecar(tmp_path, fresh_redis.url, pg, *FAST, "--webhook", receiver.url,
                       env={"BUDGETLIMITER_WEBHOOK_SECRET": secret})
        sidecars.append(side)
        for i in range(3):  # 3 x 200,000 tokens at $1/M = $0.60: crosses 50 % of $1
            side.record("acme", "alice", 200_000, f"r{i}")

        def usage() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = side.http.get(
                "/v1/usage", params={"org": "acme", "by": "agent"}).json()["rows"]
            return rows

        wait(lambda: usage() and usage()[0]["input_tokens"] == 600_000, 30,
             f"no /v1/usage rows: {side.logs()}")
        assert usage()[0]["cost"] == "0.6" or usage()[0]["cost"].startswith("0.6")
        wait(lambda: receiver.received_ids(), 30, f"no webhook: {side.logs()}")
        (hook,) = receiver.accepted()
        assert b'"threshold":50' in hook.body.replace(b" ", b"")
        # what /readyz and /metrics say about it
        wait(lambda: side.reconcile()["outbox_backlog"] == 0, 30)
        ReadyOut.model_validate(side.http.get("/readyz").json())  # the documented shape
        state = side.reconcile()
        assert state["enabled"] and state["holder"].split(":")[1] == str(side.proc.pid)
        (acme,) = [o for o in state["orgs"] if o["org"] == "acme"]
        assert acme["held_here"] and acme["lease_holder"] == state["holder"]
        assert 0 <= acme["lag_seconds"] < 30
        metrics = side.http.get("/metrics").text
        assert 'budgetlimiter_reconcile_lag_seconds{org="acme"}' in metrics
        assert (f'budgetlimiter_reconcile_lease_holder{{held_here="1",holder="{state["holder"]}",'
                'org="acme"}') in metrics
        assert "budgetlimiter_alert_backlog 0.0" in metrics
        assert "budgetlimiter_reconcile_ok 1.0" in metrics
        # a clean shutdown flushes and hands the lease back
        side.stop()
        assert side.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert "org leases released" in side.logs()
        assert fresh_redis.client().get(KEYS.reconcile_lease("acme")) is None


def test_two_sidecars_one_reconciles_each_org_and_the_other_takes_over_after_kill_9(
        fresh_redis, pg, tmp_path, sidecars):
    a = Sidecar(tmp_path, fresh_redis.url, pg, *FAST)
    sidecars.append(a)
    b = Sidecar(tmp_path, fresh_redis.url, pg, *FAST)
    sidecars.append(b)
    recorded = {"acme": 0, "beta": 0}
    n = 0

    def record_through(side: Sidecar, count: int) -> None:
        nonlocal n
        for _ in range(count):
            for org in recorded:
                n += 1
                side.record(org, f"u{n % 3}", 1000 + n, f"req-{n}")
                recorded[org] += 1000 + n

    record_through(a, 10)
    record_through(b, 10)
    wait(lambda: all(sql_tokens(pg, org) == v for org, v in recorded.items()), 30,
         f"not flushed: {a.logs()}\n{b.logs()}")
    # exactly one holder per org, and both sidecars agree on who it is
    holders = {org: fresh_redis.client().get(KEYS.reconcile_lease(org)).decode()
               for org in recorded}
    for org, holder in holders.items():
        assert [a.holds(org), b.holds(org)].count(True) == 1
        assert {o["lease_holder"] for side in (a, b) for o in side.reconcile()["orgs"]
                if o["org"] == org} == {holder}
    holder_pid = int(holders["acme"].split(":")[1])
    victim, survivor = (a, b) if holder_pid == a.proc.pid else (b, a)
    assert holder_pid == victim.proc.pid
    # more usage through both, then the holder dies mid-stride (kill -9: no release)
    record_through(victim, 5)
    record_through(survivor, 5)
    victim.stop(signal.SIGKILL)
    record_through(survivor, 5)
    took = wait(lambda: survivor.holds("acme") and survivor.holds("beta"), 30,
                f"no takeover: {survivor.logs()}")
    wait(lambda: all(sql_tokens(pg, org) == v for org, v in recorded.items()), 30,
         f"totals differ: {[sql_tokens(pg, o) for o in recorded]} != {recorded}")
    assert took < 30  # the lease is 3 s; the bound is generous on a loaded machine
    # and nothing more arrives later: exact, not at least
    time.sleep(1.5)
    assert {org: sql_tokens(pg, org) for org in recorded} == recorded
    print(f"takeover after kill -9 seen in {took:.1f}s; totals {recorded}")


def test_a_database_outage_holds_usage_in_redis_and_flushes_it_exactly_when_back(
        fresh_redis, pg, tmp_path, sidecars):
    port = int(pg.url.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultyProxy(port)  # a TCP proxy in front of PostgreSQL that can go down
    try:
        via = SqlUrl(pg.url.replace(f":{port}/", f":{proxy.port}/"), pg.schema)
        side = Sidecar(tmp_path, fresh_redis.url, via, *FAST)
        sidecars.append(side)
        for i in range(3):
            side.record("acme", "alice", 1000, f"before-{i}")
        wait(lambda: sql_tokens(pg, "acme") == 3000, 30, side.logs())
        proxy.down()
        for i in range(3):  # the hot path does not need the database
            side.record("acme", "alice", 2000, f"during-{i}")
        wait(lambda: side.reconcile()["detail"].startswith("database"), 30, side.logs())
        assert side.http.get("/readyz").status_code == 200  # still serving checks
        assert "budgetlimiter_reconcile_ok 0.0" in side.http.get("/metrics").text
        assert sql_tokens(pg, "acme") == 3000
        proxy.up()
        wait(lambda: sql_tokens(pg, "acme") == 9000, 30, side.logs())
        wait(lambda: side.reconcile()["detail"] == "", 30, side.logs())
        assert "budgetlimiter_reconcile_ok 1.0" in side.http.get("/metrics").text
    finally:
        proxy.close()


def test_no_reconcile_runs_nothing(fresh_redis, pg, tmp_path, sidecars):
    side = Sidecar(tmp_path, fresh_redis.url, pg, "--no-reconcile", *FAST)
    sidecars.append(side)
    side.record("acme", "alice", 5000, "r1")
    assert side.reconcile() == {"enabled": False}
    time.sleep(2.0)  # four would-be intervals
    r = fresh_redis.client()
    assert r.get(KEYS.reconcile_lease("acme")) is None
    assert r.get(KEYS.reconciled("acme")) is None
    assert r.scard(KEYS.dirty("acme")) == 1  # the ledger waits for a reconciler
    assert sql_tokens(pg, "acme") == 0
    assert "budgetlimiter_reconcile_lag_seconds{" not in side.http.get("/metrics").text
    # the usage was there to flush: a reconciler run by hand finds it
    cli = Cli(cwd=tmp_path, redis=fresh_redis.url, db=str(pg), policy=str(tmp_path / "policy.yaml"))
    assert cli("reconcile", "--once").code == 0
    assert sql_tokens(pg, "acme") == 5000


def test_serve_with_a_webhook_but_no_secret_exits_2(fresh_redis, pg, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    done = Cli(cwd=tmp_path, redis=fresh_redis.url, db=str(pg), policy=str(policy))(
        "serve", "--port", str(free_port()), "--webhook", "http://127.0.0.1:9/hook")
    assert done.code == 2 and "BUDGETLIMITER_WEBHOOK_SECRET" in done.err
    assert "Traceback" not in done.err and os.environ.get("BUDGETLIMITER_WEBHOOK_SECRET") is None


def test_the_kubernetes_manifest_runs_reconciling_sidecars_with_options_that_exist():
    import yaml

    from budgetlimiter.cli.serve import serve

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes-sidecar.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (side,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
               if c["name"] == "budgetlimiter"]
    env = {e["name"] for e in side["env"]}
    assert {"BUDGETLIMITER_DB", "BUDGETLIMITER_WEBHOOK_SECRET"} <= env
    options = {o for p in serve.params for o in p.opts}
    flags = [a for a in side["args"] if a.startswith("--")]
    assert set(flags) <= options and "--no-reconcile" not in flags
    assert deployment["spec"]["replicas"] >= 2  # the lease is what makes that safe
