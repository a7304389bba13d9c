"""The HTTP sidecar against a real redis-server: every endpoint over real HTTP (uvicorn in a
background thread, httpx), auth, bad input without side effects, 429 semantics, reload,
readiness."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from click.testing import CliRunner

from budgetlimiter.cli.context import Context
from budgetlimiter.cli.serve import serve
from budgetlimiter.policy import parse_policy
from budgetlimiter.server import ConfigError, ServerConfig, create_app, parse_tokens
from budgetlimiter.server.testing import LiveServer

from .conftest import FakeClock
from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
  copilot: {per_invocation: "0.04"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "10", period: month}
    teams:
      eng:
        limits:
          - {metric: cost, amount: "0.001", period: day}
  rl:
    rates:
      - {metric: invocations, limit: 2, per: second}
"""
ALICE = {"org": "acme", "team": "eng", "user": "alice", "agent": "gpt"}
READ = "reader:r" + "x" * 20 + ":read"
WRITE = "writer:w" + "y" * 20 + ":write"
READ_H = {"Authorization": "Bearer r" + "x" * 20}
WRITE_H = {"Authorization": "Bearer w" + "y" * 20}

Start = Callable[..., tuple[httpx.Client, Any]]


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def start(fresh_redis: RedisServer, clock: FakeClock, policy_file: Path
          ) -> Iterator[Start]:
    """Start a sidecar; returns an httpx client on it and the app."""
    running: list[tuple[LiveServer, httpx.Client]] = []

    def make(**overrides: Any) -> tuple[httpx.Client, Any]:
        cfg = {"redis_url": fresh_redis.url, "policy_path": str(policy_file),
               "redis_timeout": 1.0, **overrides}
        store = cfg.pop("store", None)
        app = create_app(ServerConfig(**cfg), clock=clock, store=store)
        live = LiveServer(app, http="httptools").start()
        client = httpx.Client(base_url=live.url, timeout=10)
        running.append((live, client))
        return client, app

    yield make
    for live, client in running:
        client.close()
        live.stop()


def snapshot(server: RedisServer) -> dict[Any, Any]:
    """Every key with its serialized value (what 'no counter changed' compares)."""
    r = server.client()
    return {k: r.dump(k) for k in sorted(r.keys("*"))}


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = resp.json()
    assert doc["code"] == code and doc["status"] == status
    assert doc["type"].endswith(code) and doc["title"]
    return doc


def check(client: httpx.Client, inp: int = 100, out: int = 100, subject: dict[str, str] = ALICE,
          **kw: Any) -> httpx.Response:
    body = {"subject": subject, "estimate": {"input_tokens": inp, "output_tokens": out}}
    return client.post("/v1/check", json=body, **kw)


# ---------------------------------------------------------------------- operations

def test_health_ready_openapi_and_request_ids(start: Start) -> None:
    client, _ = start()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "redis": True, "scripts": True, "policy": True}
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/check", "/v1/commit", "/v1/release", "/v1/record", "/v1/check:batch",
            "/v1/status/{scope}", "/v1/usage", "/v1/policy/effective"} <= set(doc["paths"])
    assert "CheckRequest" in doc["components"]["schemas"]
    resp = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-Id": "bad id\twith tab"})
    assert generated.headers["x-request-id"] != "bad id\twith tab"
    missing = client.get("/nope")
    assert problem(missing, 404, "not_found")["request_id"] == missing.headers["x-request-id"]
    problem(client.delete("/v1/check"), 405, "method_not_allowed")


def test_check_commit_status_by_id(start: Start) -> None:
    client, _ = start()
    resp = check(client)
    assert resp.status_code == 200
    d = resp.json()
    assert d["allowed"] is True and d["reservation_id"]
    assert d["subject"] == "org:acme/team:eng/user:alice/agent:gpt"
    eng = client.get("/v1/status/" + quote("org:acme/team:eng", safe="")).json()
    assert eng["scope"] == "org:acme/team:eng"
    assert eng["limits"][0]["reserved"] == "0.000300" and eng["limits"][0]["used"] == "0.000000"
    # commit priced with the subject's agent pricing
    body = {"org": "acme", "reservation_id": d["reservation_id"], "subject": ALICE,
            "actual": {"input_tokens": 50, "output_tokens": 25}}
    done = client.post("/v1/commit", json=body)
    assert done.json() == {"status": "committed", "id": d["reservation_id"], "cost": "0.000100",
                           "overshoot": False, "thresholds": done.json()["thresholds"]}
    assert client.post("/v1/commit", json=body).json()["status"] == "duplicate"
    limits = client.get("/v1/status/org:acme/team:eng").json()["limits"]  # unencoded works too
    assert limits[0]["used"] == "0.000100" and limits[0]["reserved"] == "0.000000"
    # commit with an explicit cost needs no subject
    rid = check(client, 10, 0).json()["reservation_id"]
    res = client.post("/v1/commit", json={"org": "acme", "reservation_id": rid,
                                          "actual": {"cost": "0.0002"}})
    assert res.json()["cost"] == "0.000200"
    # neither subject nor cost: refused before any I/O
    rid = check(client, 10, 0).json()["reservation_id"]
    problem(client.post("/v1/commit", json={"org": "acme", "reservation_id": rid,
                                            "actual": {"input_tokens": 1}}), 422, "invalid_input")
    problem(client.post("/v1/commit", json={"org": "acme", "reservation_id": "never-made",
                                            "actual": {"cost": "0"}}),
            404, "reservation_not_found")
    problem(client.post("/v1/commit", json={"org": "other", "reservation_id": rid,
                                            "subject": ALICE, "actual": {}}),
            409, "org_mismatch")


def test_release_record_batch_and_effective_policy(start: Start) -> None:
    client, _ = start()
    rid = check(client).json()["reservation_id"]
    rel = client.post("/v1/release", json={"org": "acme", "reservation_id": rid})
    assert rel.status_code == 200 and rel.json()["status"] == "released"
    assert client.post("/v1/release", json={"org": "acme", "reservation_id": rid}
                       ).json()["status"] == "duplicate"
    rec = {"subject": ALICE, "actual": {"input_tokens": 100}, "request_id": "req-1"}
    assert client.post("/v1/record", json=rec).json()["status"] == "recorded"
    assert client.post("/v1/record", json=rec).json()["status"] == "duplicate"
    batch = client.post("/v1/check:batch", json={"items": [
        {"subject": ALICE, "estimate": {"input_tokens": 100}},
        {"subject": ALICE, "estimate": {"input_tokens": 10_000}},
    ]})
    assert [d["allowed"] for d in batch.json()["decisions"]] == [True, False]
    eff = client.get("/v1/policy/effective",
                     params={"org": "acme", "team": "eng", "agent": "gpt"}).json()
    assert eff["subject"]["team"] == "eng" and eff["timezone"] == "UTC"
    scopes = {s["scope"]: s for s in eff["scopes"]}
    assert scopes["org:acme/team:eng"]["limits"][0]["amount"] == "0.001"
    problem(client.get("/v1/policy/effective", params={"org": "acme"}), 422, "invalid_input")


def test_blocked_check_200_or_429_with_ratelimit_headers(start: Start) -> None:
    client, _ = start()
    denied = check(client, 10_000, 0)
    assert denied.status_code == 200 and denied.json()["allowed"] is False
    assert denied.json()["blocked_by"]["scope"] == "org:acme/team:eng"
    for kw in ({"params": {"http_status": "true"}},
               {"headers": {"Prefer": "respond-async, budget-status=http"}}):
        resp = check(client, 10_000, 0, **kw)
        doc = problem(resp, 429, "budget_exceeded")
        assert doc["decision"]["allowed"] is False
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["ratelimit-policy"] == '"org:acme/team:eng|cost|day";q=1000;w=86400'
        assert resp.headers["ratelimit"].startswith('"org:acme/team:eng|cost|day";r=1000;t=')
    # an allowed check with HTTP semantics is a plain 200
    assert check(client, params={"http_status": "true"}).status_code == 200
    rl = {"org": "rl", "agent": "gpt"}
    codes = [check(client, 1, 0, rl, params={"http_status": "true"}).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    resp = check(client, 1, 0, rl, params={"http_status": "true"})
    assert problem(resp, 429, "rate_limited")["decision"]["blocked_by"]["kind"] == "rate"
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["ratelimit-policy"] == '"org:rl|invocations|per second";q=2;w=1'


def test_status_with_encoded_ids_and_bad_scopes(start: Start) -> None:
    client, _ = start()
    odd = {"org": "acme", "team": "a/b c", "agent": "gpt"}
    assert check(client, 1, 0, odd).json()["allowed"] is True
    scope = "org:acme/team:" + quote("a/b c", safe="")
    doc = client.get("/v1/status/" + quote(scope, safe="")).json()
    assert doc == {"scope": "org:acme/team:a%2Fb%20c", "limits": []}
    problem(client.get("/v1/status/" + quote("team:eng", safe="")), 422, "invalid_input")
    problem(client.get("/v1/status/org%3A%FF"), 422, "invalid_input")
    problem(client.get("/v1/status/org%3Aa%0Ab"), 422, "invalid_input")  # a control char


def test_usage_reports(start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = start(db_url=f"sqlite:///{tmp_path / 'bl.db'}")
    for by in ("agent", "team", "user", "trend"):
        resp = client.get("/v1/usage", params={"org": "acme", "by": by, "from": "2026-03-01",
                                               "to": "2026-03-03"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["from"] == "2026-03-01" and resp.json()["by"] == by
    trend = client.get("/v1/usage", params={"org": "acme", "by": "trend", "from": "2026-03-01",
                                            "to": "2026-03-02", "scope": "org:acme/team:eng"})
    assert trend.json()["series"] == [{"period": "2026-03-01", "value": "0.000000"},
                                      {"period": "2026-03-02", "value": "0.000000"}]
    from budgetlimiter.durable.store import reports

    monkeypatch.setattr(reports, "usage_by_agent", lambda *a: [
        {"agent": "gpt", "invocations": 3, "cost": 1_500}])
    rows = client.get("/v1/usage", params={"org": "acme", "by": "agent"}).json()["rows"]
    assert rows == [{"agent": "gpt", "invocations": 3, "cost": "0.001500"}]
    for params in ({"org": "acme", "by": "nope"}, {"by": "agent"},
                   {"org": "acme", "by": "agent", "from": "2026-13-01"},
                   {"org": "acme", "by": "trend", "metric": "bogus"}):
        assert client.get("/v1/usage", params=params).status_code == 422, params
    problem(client.get("/v1/usage", params={"org": "acme", "by": "trend", "scope": "org:other"}),
            409, "org_mismatch")
    metrics = client.get("/metrics").text
    assert "budgetlimiter_alert_backlog 0.0" in metrics


def test_usage_without_database(start: Start) -> None:
    client, _ = start()
    problem(client.get("/v1/usage", params={"org": "acme", "by": "team"}),
            503, "store_unavailable")


def test_metrics(start: Start) -> None:
    client, _ = start()
    check(client)
    check(client, 10_000, 0)
    text = client.get("/metrics").text
    assert 'budgetlimiter_decisions_total{kind="none",level="none",outcome="allowed"} 1.0' in text
    assert 'budgetlimiter_decisions_total{kind="budget",level="team",outcome="denied"} 1.0' \
        in text
    assert 'budgetlimiter_reservations_outstanding{org="acme"} 1.0' in text
    assert "budgetlimiter_http_request_duration_seconds_bucket" in text
    assert "budgetlimiter_redis_errors_total 0.0" in text
    # the client's batching, read at scrape time: calls, the writes that carried them, and
    # the pipeline windows opened (none: this sidecar is far from busy)
    calls = float(re.search(r"^budgetlimiter_redis_script_calls_total (\S+)$", text, re.M)[1])
    writes = float(re.search(r"^budgetlimiter_redis_writes_total (\S+)$", text, re.M)[1])
    assert calls >= 2 and 1 <= writes <= calls
    assert "budgetlimiter_pipeline_windows_total 0.0" in text


# ---------------------------------------------------------------------- security

def test_auth_read_and_write_tokens(start: Start) -> None:
    client, _ = start(tokens=parse_tokens([READ, WRITE]))
    assert client.get("/healthz").status_code == 200  # probes stay open
    assert client.get("/readyz").status_code == 200
    resp = check(client)
    problem(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    problem(check(client, headers={"Authorization": "Bearer wrong-token-value-xx"}),
            401, "unauthorized")
    problem(check(client, headers={"Authorization": "Basic " + "w" + "y" * 20}),
            401, "unauthorized")
    problem(check(client, headers=READ_H), 403, "forbidden")
    assert check(client, headers=WRITE_H).status_code == 200
    assert client.get("/v1/status/org:acme", headers=READ_H).status_code == 200
    assert client.get("/v1/status/org:acme", headers=WRITE_H).status_code == 200
    problem(client.get("/v1/status/org:acme"), 401, "unauthorized")
    problem(client.get("/metrics"), 401, "unauthorized")
    assert client.get("/metrics", headers=READ_H).status_code == 200


def test_tokens_never_logged(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = start(tokens=parse_tokens([WRITE]))
    with caplog.at_level("INFO"):
        check(client, headers=WRITE_H)
        check(client, headers={"Authorization": "Bearer not-the-secret-value"})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "writer" in text  # the token's name is logged
    assert "y" * 20 not in text and "not-the-secret-value" not in text
    assert "authorization" not in text.lower()


def test_token_parsing_and_repr() -> None:
    tokens = parse_tokens([READ], env=f" {WRITE} ,")
    assert [(t.name, t.scope) for t in tokens] == [("reader", "read"), ("writer", "write")]
    assert "y" * 20 not in repr(tokens)
    for bad in ("nocolon", "a:short:read", "a:" + "s" * 20 + ":root", ":" + "s" * 20 + ":read",
                "a:" + "s" * 20 + ":write:org="):
        with pytest.raises(ConfigError):
            parse_tokens([bad])
    with pytest.raises(ConfigError, match="unique"):
        parse_tokens([READ, READ])
    # admin tokens change limits; org= restricts a token to one org (secrets may hold colons)
    (boss, tenant) = parse_tokens(["boss:" + "b:" * 10 + ":admin", "t:" + "s" * 20 +
                                   ":write:org=acme"])
    assert (boss.secret, boss.scope, boss.org) == ("b:" * 10, "admin", None)
    assert (tenant.scope, tenant.org) == ("write", "acme")
    assert parse_tokens([tenant.text()]) == (tenant,)


def test_worker_config_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetlimiter.server.config import ENV_CONFIG, dump_env_config, load_env_config

    cfg = ServerConfig(host="0.0.0.0", tokens=parse_tokens([READ, WRITE]), workers=3,
                       policy_path="p.yaml", db_url="sqlite://", max_body=2048)
    monkeypatch.setenv(ENV_CONFIG, dump_env_config(cfg))
    assert load_env_config() == cfg


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "sidecar.example"])
def test_refuses_to_start_exposed_without_token(host: str, policy_file: Path) -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        ServerConfig(host=host).validate()
    assert ServerConfig(host=host, tokens=parse_tokens([WRITE])).validate().auth_enabled
    for loopback in ("127.0.0.1", "::1", "localhost"):
        ServerConfig(host=loopback).validate()
    obj = Context("memory://", "sqlite://", str(policy_file), "table")
    result = CliRunner().invoke(serve, ["--host", host], obj=obj, env={
        "BUDGETLIMITER_TOKENS": ""})
    assert result.exit_code == 2 and "without authentication" in result.output


# ---------------------------------------------------------------------- bad input

BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("/v1/check", {}, 422, "invalid_input"),
    ("/v1/check", {"subject": {"org": "acme"}}, 422, "invalid_input"),
    ("/v1/check", {"subject": {**ALICE, "org": 5}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"input_tokens": -1}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"input_tokens": "10"}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"input_tokens": 1.5}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"input_tokens": True}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"cost": 0.5}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"cost": "-1"}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"cost": "NaN"}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"cost": "99999999999"}}, 422,
     "invalid_input"),
    ("/v1/check", {"subject": ALICE, "estimate": {"input_tokens": 2**60}}, 422,
     "invalid_input"),
    ("/v1/check", {"subject": ALICE, "ttl": 0}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "extra": 1}, 422, "invalid_input"),
    ("/v1/check", {"subject": {**ALICE, "agent": "unpriced"}}, 422, "unknown_agent"),
    ("/v1/check", {"subject": {**ALICE, "user": "a\u0000b"}}, 422, "invalid_id"),
    ("/v1/check", {"subject": {**ALICE, "user": ""}}, 422, "invalid_input"),
    ("/v1/check", {"subject": ALICE, "reservation_id": "x" * 300}, 422, "invalid_input"),
    ("/v1/check", [], 422, "invalid_input"),
    ("/v1/check:batch", {"items": [{"subject": ALICE}, {"subject": {"org": "acme"}}]}, 422,
     "invalid_input"),
    ("/v1/commit", {"org": "acme", "reservation_id": "r1"}, 422, "invalid_input"),
    ("/v1/commit", {"org": "acme", "reservation_id": "r1", "actual": {"output_tokens": -5},
                    "subject": ALICE}, 422, "invalid_input"),
    ("/v1/release", {"org": "acme"}, 422, "invalid_input"),
    ("/v1/record", {"subject": ALICE, "actual": {"invocations": -1}}, 422, "invalid_input"),
    ("/v1/record", {"subject": ALICE, "actual": {}, "request_id": "\ud800"}, 422,
     "invalid_input"),
]
RAW_BODIES: list[tuple[bytes, int, str]] = [
    (b'{"subject": {"org": "acme", "agent": "gpt"}, "ttl": NaN}', 400, "invalid_json"),
    (b'{"subject": {"org": "acme", "agent": "gpt"}, "ttl": Infinity}', 400, "invalid_json"),
    (b'{"subject": {"org": "acme", "agent": "gpt"}, "ttl": 1e999}', 422, "invalid_input"),
    (b'{"subject": ', 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b"[" * 50_000, 400, "invalid_json"),
    (b"", 400, "invalid_json"),
]


def test_bad_bodies_are_problems_without_side_effects(start: Start,
                                                      fresh_redis: RedisServer) -> None:
    client, _ = start()
    check(client)  # some state to compare against
    before = snapshot(fresh_redis)
    for path, body, status, code in BAD_BODIES:
        content = json.dumps(body).encode()
        resp = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert resp.status_code == status, (path, body, resp.text)
        assert resp.json()["code"] == code, (path, body, resp.text)
    for raw, status, code in RAW_BODIES:
        problem(client.post("/v1/check", content=raw), status, code)
    big = json.dumps({"subject": ALICE, "pad": "x" * 10_000_000}).encode()
    problem(client.post("/v1/check", content=big), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(100):
            yield b" " * 1024

    problem(client.post("/v1/check", content=chunks()), 413, "payload_too_large")
    assert snapshot(fresh_redis) == before
    assert client.get("/healthz").status_code == 200  # still serving


# ---------------------------------------------------------------------- reload, outages

def test_policy_reload_keeps_old_policy_on_error(start: Start, policy_file: Path) -> None:
    client, app = start()
    server = app.state.server

    def eng_amount() -> str:
        eff = client.get("/v1/policy/effective",
                         params={"org": "acme", "team": "eng", "agent": "gpt"}).json()
        return str({s["scope"]: s for s in eff["scopes"]}["org:acme/team:eng"]["limits"][0]
                   ["amount"])

    assert eng_amount() == "0.001"
    policy_file.write_text(POLICY.replace('amount: "0.001"', 'amount: "0.5"'))
    assert server.reload_policy() is True
    assert eng_amount() == "0.5"
    assert check(client, 10_000, 0).json()["allowed"] is True  # the new limit is enforced
    policy_file.write_text(POLICY.replace('amount: "0.001"', 'amount: "-3"'))
    assert server.reload_policy() is False
    assert eng_amount() == "0.5"
    policy_file.write_text("{not yaml: [")
    assert server.reload_policy() is False
    text = client.get("/metrics").text
    assert 'budgetlimiter_policy_reloads_total{result="ok"} 1.0' in text
    assert 'budgetlimiter_policy_reloads_total{result="error"} 2.0' in text


def test_redis_down_readyz_503(start: Start, dead_port_number: int) -> None:
    client, _ = start(redis_url=f"redis://127.0.0.1:{dead_port_number}/0", redis_timeout=0.2,
                      ready_timeout=0.5)
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False
    d = check(client).json()  # fail_closed: a degraded denial, not an error
    assert d["allowed"] is False and d["degraded"] is True
    assert d["reason"] == "backend_unavailable"
    problem(check(client, params={"http_status": "true"}), 503, "backend_unavailable")
    # commit by id cannot be kept for later without the plan: 503, the caller retries
    resp = client.post("/v1/commit", json={"org": "acme", "reservation_id": "r1",
                                           "actual": {"cost": "0.1"}})
    problem(resp, 503, "backend_unavailable")
    assert resp.headers["retry-after"] == "1"
    # the library answers release (TTL refunds) and record (replayed later) locally
    resp = client.post("/v1/release", json={"org": "acme", "reservation_id": "r1"})
    assert resp.status_code == 200 and resp.json()["status"] == "local"
    problem(client.get("/v1/status/org:acme"), 503, "backend_unavailable")
    text = client.get("/metrics").text
    assert "budgetlimiter_redis_errors_total 0.0" not in text
    assert 'outcome="degraded_denied"' in text
    assert "budgetlimiter_redis_circuit_open 1.0" in text  # the breaker tripped


def test_broken_policy_stops_startup(tmp_path: Path, fresh_redis: RedisServer) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("orgs: {acme: {limits: [{metric: cost, amount: '-1', period: day}]}}")
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(bad)))
    with pytest.raises(RuntimeError, match="failed to start"):
        LiveServer(app).start()


def test_graceful_stop_closes_limiter(fresh_redis: RedisServer, policy_file: Path) -> None:
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(policy_file)))
    live = LiveServer(app).start()
    with httpx.Client(base_url=live.url) as client:
        assert check(client).status_code == 200
    live.stop()
    assert not live.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(live.url + "/healthz", timeout=1)


@pytest.mark.keys_without_ttl("writes a bare key to see the snapshot helper notice it")
def test_redis_snapshot_helper_sees_changes(fresh_redis: RedisServer) -> None:
    before = snapshot(fresh_redis)
    redis.Redis(port=fresh_redis.port).set("k", "v")
    assert snapshot(fresh_redis) != before


def test_parse_policy_used_by_tests_is_valid() -> None:
    assert parse_policy(POLICY).declared_orgs() == ("acme", "rl")


def test_serve_command_options(policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    import prometheus_client

    from budgetlimiter.server import logs

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(logs, "setup_logging", lambda level: None)  # keep global logging
    monkeypatch.setattr(prometheus_client, "disable_created_metrics", lambda: None)
    obj = Context("redis://127.0.0.1:1/0", "sqlite://", str(policy_file), "table")
    env = {"BUDGETLIMITER_HOST": "0.0.0.0", "BUDGETLIMITER_PORT": "9999",
           "BUDGETLIMITER_TOKENS": WRITE}
    result = CliRunner().invoke(serve, [], obj=obj, env=env)
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 9999)
    assert (seen["loop"], seen["http"]) == ("uvloop", "httptools")
    server = seen["app"].state.server
    assert [t.name for t in server.config.tokens] == ["writer"]
    assert server.config.pipeline_window == 0.0  # HTTP alone: its requests come in bursts
    for args, window in ((["--grpc-port", "0"], 0.004), (["--grpc-port", "0",
                         "--pipeline-window", "0"], 0.0), (["--pipeline-window", "2.5"], 0.0025)):
        assert CliRunner().invoke(serve, args, obj=obj, env=env).exit_code == 0
        assert seen["app"].state.server.config.pipeline_window == window, args
    broken = policy_file.parent / "broken.yaml"
    broken.write_text("orgs: [")
    bad = Context("memory://", "sqlite://", str(broken), "table")
    assert CliRunner().invoke(serve, [], obj=bad).exit_code != 0


def test_started_while_redis_is_down_reports_not_ready_then_recovers(policy_file: Path) -> None:
    import time

    server = RedisServer()  # chosen port, not started: Redis is down
    app = create_app(ServerConfig(redis_url=server.url, policy_path=str(policy_file),
                                  redis_timeout=0.2))
    live = LiveServer(app).start()  # starting does not need Redis
    try:
        with httpx.Client(base_url=live.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            server.start()
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the sidecar did not become ready"
                time.sleep(0.1)
            ok = check(client)
            while ok.json().get("degraded") and time.monotonic() < deadline:
                time.sleep(0.2)  # the circuit breaker's next probe
                ok = check(client)
            assert ok.status_code == 200 and ok.json()["allowed"] is True
            assert not ok.json()["degraded"]
    finally:
        live.stop()
        server.stop()
