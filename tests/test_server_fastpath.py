"""The sidecar's hot endpoints (served by the gate, without the router): the compact answer of
``Prefer: return=minimal``, and that everything around them is as before (request ids, auth,
metrics, 405, bad input). Real redis-server, real uvicorn, real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from budgetlimiter.server import ServerConfig, create_app, parse_tokens
from budgetlimiter.server.openapi import build_openapi
from budgetlimiter.server.testing import LiveServer

from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    teams:
      eng:
        limits:
          - {metric: cost, amount: "0.001", period: day}
"""
ALICE = {"org": "acme", "team": "eng", "user": "alice", "agent": "gpt"}
MINIMAL = {"Prefer": "return=minimal"}
WRITE = "writer:w" + "y" * 20 + ":write"
WRITE_H = {"Authorization": "Bearer w" + "y" * 20}


@pytest.fixture
def client(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[httpx.Client]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(path),
                                  redis_timeout=1.0, tokens=parse_tokens([WRITE])))
    live = LiveServer(app, http="httptools").start()
    with httpx.Client(base_url=live.url, timeout=10, headers=WRITE_H) as c:
        yield c
    live.stop()


def test_check_answers_the_compact_form_when_prefer_return_minimal(
        client: httpx.Client) -> None:
    body = {"subject": ALICE, "estimate": {"input_tokens": 100}}
    got = client.post("/v1/check", json=body, headers=MINIMAL)
    assert got.status_code == 200
    assert got.headers["preference-applied"] == "return=minimal"
    assert got.headers["content-type"] == "application/json"
    doc = got.json()
    assert set(doc) == {"allowed", "reservation_id", "retry_after", "blocked_by"}
    assert doc["allowed"] is True and doc["reservation_id"] and doc["blocked_by"] is None
    denied = client.post("/v1/check", json={"subject": ALICE,
                                            "estimate": {"input_tokens": 10**9}},
                         headers={"Prefer": "respond-async, return=minimal"}).json()
    assert denied["allowed"] is False and denied["reservation_id"] is None
    assert denied["blocked_by"]["scope"] == "org:acme/team:eng"
    full = client.post("/v1/check", json=body)
    assert "preference-applied" not in full.headers and "limits" in full.json()


def test_batch_answers_the_compact_form_when_prefer_return_minimal(
        client: httpx.Client) -> None:
    items = [{"subject": ALICE, "estimate": {"input_tokens": 10}}] * 3
    got = client.post("/v1/check:batch", json={"items": items}, headers=MINIMAL)
    assert got.headers["preference-applied"] == "return=minimal"
    decisions = got.json()["decisions"]
    assert len(decisions) == 3 and all(d["allowed"] for d in decisions)
    assert all(set(d) == {"allowed", "reservation_id", "retry_after", "blocked_by"}
               for d in decisions)


def test_hot_endpoints_keep_ids_auth_metrics_and_405_when_served_by_the_gate(
        client: httpx.Client) -> None:
    body = {"subject": ALICE}
    mine = client.post("/v1/check", json=body, headers={"X-Request-Id": "abc-1", **MINIMAL})
    assert mine.headers["x-request-id"] == "abc-1"
    generated = client.post("/v1/check", json=body).headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    nope = httpx.post(str(client.base_url) + "/v1/check", json=body)
    assert nope.status_code == 401 and nope.json()["code"] == "unauthorized"
    wrong = client.get("/v1/check")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    bad = client.post("/v1/check", json={"subject": {**ALICE, "user": "a\nb"}},
                      headers=MINIMAL)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_id"
    assert bad.json()["detail"].startswith("subject.user: ")
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.headers["x-request-id"]
    text = client.get("/metrics").text
    assert 'budgetlimiter_http_requests_total{method="POST",route="/v1/check",status="200"} 2.0' \
        in text
    assert 'route="/v1/check",status="422"' in text


def test_openapi_describes_the_compact_answer_and_its_header() -> None:
    paths = build_openapi("test")["paths"]
    for path in ("/v1/check", "/v1/check:batch"):
        ok = paths[path]["post"]["responses"]["200"]
        assert "Preference-Applied" in ok["headers"]
        refs = {r["$ref"].rsplit("/", 1)[-1]
                for r in ok["content"]["application/json"]["schema"]["anyOf"]}
        assert refs in ({"DecisionOut", "DecisionMinimalOut"}, {"BatchOut", "BatchMinimalOut"})
        prefer = [p for p in paths[path]["post"]["parameters"] if p["name"] == "Prefer"]
        assert "return=minimal" in prefer[0]["description"]


def test_a_remembered_check_body_never_lets_a_look_alike_invalid_body_through(
        client: httpx.Client) -> None:
    """Valid check bodies are remembered by value (validated once); a body whose values
    hash alike but are other JSON types, or that adds a field, is validated again."""
    good = {"subject": ALICE, "estimate": {"input_tokens": 1}}
    for _ in range(3):
        assert client.post("/v1/check", json=good, headers=MINIMAL).json()["allowed"]
    bad_bodies = [
        {"subject": ALICE, "estimate": {"input_tokens": True}},   # true == 1 in Python
        {"subject": {**ALICE, "org": None}, "estimate": {"input_tokens": 1}},
        {"subject": ALICE, "estimate": {"input_tokens": 1}, "surprise": 1},
        {"subject": ALICE, "estimate": None},
    ]
    for body in bad_bodies:
        got = client.post("/v1/check", json=body)
        assert got.status_code == 422, (body, got.text)
        assert got.headers["content-type"] == "application/problem+json"
    # the remembered body still answers, and an omitted estimate equals {} (one invocation)
    assert client.post("/v1/check", json=good).json()["allowed"]
    assert client.post("/v1/check", json={"subject": ALICE}).json()["allowed"]
    assert client.post("/v1/check", json={"subject": ALICE, "estimate": {}}).json()["allowed"]


def test_a_sidecar_that_owns_its_process_freezes_its_startup_objects_for_the_collector(
        fresh_redis: RedisServer, tmp_path: Path) -> None:
    """``serve`` sets ``gc_freeze``: after start everything alive is in the collector's
    permanent generation (full collections no longer walk the policy, models and caches:
    the sidecar's p99 under load, README Throughput); an embedded app leaves it alone."""
    import gc

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    gc.unfreeze()
    embedded = LiveServer(create_app(ServerConfig(redis_url=fresh_redis.url,
                                                  policy_path=str(path)))).start()
    try:
        assert gc.get_freeze_count() == 0
    finally:
        embedded.stop()
    owned = LiveServer(create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(path),
                                               gc_freeze=True))).start()
    try:
        assert gc.get_freeze_count() > 0
        with httpx.Client(base_url=owned.url, timeout=10) as c:
            assert c.post("/v1/check", json={"subject": ALICE}).json()["allowed"]
    finally:
        owned.stop()
        gc.unfreeze()  # (the test process is not a sidecar)
