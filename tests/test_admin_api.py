"""The admin API over real HTTP (uvicorn in a thread, a real redis-server, SQLite): limits
with ETags, bad input, versions and rollback, the audit log, admin and org-restricted tokens."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest

from budgetlimiter.server import parse_tokens

from . import test_envoy_service as envoy
from . import test_server
from .test_server import ALICE, Start, check, problem, snapshot

pytestmark = pytest.mark.redis
start = test_server.start
policy_file = test_server.policy_file

ADMIN = "boss:a" + "z" * 20 + ":admin"
WRITE = "writer:w" + "y" * 20 + ":write"
TENANT = "tenant:t" + "q" * 20 + ":admin:org=rl"
ADMIN_H = {"Authorization": "Bearer a" + "z" * 20}
WRITE_H = {"Authorization": "Bearer w" + "y" * 20}
TENANT_H = {"Authorization": "Bearer t" + "q" * 20}
ENG = "/v1/limits/" + quote("org:acme/team:eng", safe="")
RAISE = {"limits": [{"metric": "cost", "amount": "50", "period": "day"}], "why": "launch"}


def _start(start: Start, tmp_path: Any) -> httpx.Client:
    client, _ = start(db_url=f"sqlite:///{tmp_path / 'admin.db'}",
                      tokens=parse_tokens([ADMIN, WRITE, TENANT]))
    return client


def test_a_put_is_enforced_at_once_versioned_audited_and_guarded_by_its_etag(
        start: Start, tmp_path: Any) -> None:
    client = _start(start, tmp_path)
    assert check(client, 1000, 1000, headers=WRITE_H).json()["allowed"] is False  # $0.001/day
    got = client.get(ENG, headers=ADMIN_H)
    assert got.status_code == 200 and got.headers["etag"] == '"0"'
    assert got.json()["override"] is None
    put = client.put(ENG, json=RAISE, headers={**ADMIN_H, "If-Match": got.headers["etag"]})
    assert put.status_code == 200, put.text
    doc = put.json()
    assert doc["version"] == 1 and doc["published"] is True and put.headers["etag"] == '"1"'
    assert doc["audit"]["who"] == "boss" and doc["audit"]["why"] == "launch"
    assert doc["audit"]["before"] == ["cost 0.001 per day hard (orgs.acme.teams.eng.limits[0])"]
    assert doc["audit"]["after"] == ["cost 50 per day hard (override v1.limits[0])"]
    assert check(client, 1000, 1000, headers=WRITE_H).json()["allowed"] is True
    stale = client.put(ENG, json=RAISE, headers={**ADMIN_H, "If-Match": '"0"'})
    problem(stale, 412, "precondition_failed")
    eff = client.get("/v1/policy/effective", params={"org": "acme", "team": "eng",
                                                     "agent": "gpt"}, headers=ADMIN_H).json()
    assert eff["overrides_version"] == 1
    assert [lim["origin"] for s in eff["scopes"] for lim in s["limits"]
            if s["scope"] == "org:acme/team:eng"] == ["override v1.limits[0]"]
    gone = client.delete(ENG, params={"why": "back to the file"}, headers=ADMIN_H)
    assert gone.status_code == 200 and gone.json()["state"]["override"] is None
    versions = client.get("/v1/policy/versions", headers=ADMIN_H).json()
    assert versions["in_force"] == 2 and [v["action"] for v in versions["versions"]] == [
        "override.remove", "override.set"]
    back = client.post("/v1/policy/rollback", json={"version": 1, "why": "oops"},
                       headers=ADMIN_H)
    assert back.status_code == 200 and back.json()["version"] == 3
    assert check(client, 1000, 1000, headers=WRITE_H).json()["allowed"] is True
    audit = client.get("/v1/audit", params={"org": "acme"}, headers=ADMIN_H).json()["entries"]
    assert [e["action"] for e in audit if e["org"] == "acme"] == [
        "override.set", "override.remove", "policy.rollback"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "detail"), [
    ("put", ENG, {"json": {"limits": [{"metric": "cost", "amount": "-5", "period": "day"}],
                           "why": "x"}}, 422, "invalid_input",
     "limits[0].amount: must not be negative (got '-5')"),
    ("put", ENG, {"json": {"limits": [{"metric": "cost", "amount": "1", "period": "day",
                                       "rollover_cap": "2"}], "why": "x"}}, 422,
     "invalid_input", "limits[0].rollover_cap: rollover_cap is only allowed with rollover"),
    ("put", ENG, {"json": {"limits": [], "why": "x"}}, 422, "invalid_input", "limits: "),
    ("put", ENG, {"json": {"limits": [{"metric": "cost", "amount": "1", "period": "day"}]}},
     422, "invalid_input", "why: "),
    ("put", "/v1/limits/" + quote("org:acem", safe=""), {"json": RAISE}, 404, "not_found",
     "scope: org 'acem' is not declared"),
    ("put", "/v1/limits/team:eng", {"json": RAISE}, 422, "invalid_input", "scope: "),
    ("delete", ENG, {"params": {"why": "x", "limit": "invocations/day"}}, 404,
     "not_found", "limit: org:acme/team:eng has no invocations per day limit"),
    ("delete", ENG, {"params": {"why": "x", "limit": "cost/fortnight"}}, 422,
     "invalid_input", "limit: "),
    ("delete", ENG, {"params": {"why": "x"}}, 404, "not_found", "scope: org:acme/team:eng has "
     "no override"),
    ("post", "/v1/policy/rollback", {"json": {"version": 7, "why": "x"}}, 404, "not_found",
     "version: there is no override version 7"),
    ("post", "/v1/policy/rollback", {"json": {"version": -1, "why": "x"}}, 422,
     "invalid_input", "version: "),
])
def test_bad_changes_name_the_field_and_store_and_publish_nothing(
        start: Start, tmp_path: Any, fresh_redis: Any, method: str, path: str,
        kwargs: dict[str, Any], status: int, code: str, detail: str) -> None:
    client = _start(start, tmp_path)
    before = snapshot(fresh_redis)
    resp = getattr(client, method)(path, headers=ADMIN_H, **kwargs)
    assert problem(resp, status, code)["detail"].startswith(detail), resp.text
    assert snapshot(fresh_redis) == before
    assert client.get("/v1/policy/versions", headers=ADMIN_H).json()["in_force"] == 0


def test_changing_limits_needs_an_admin_token(start: Start, tmp_path: Any) -> None:
    client = _start(start, tmp_path)
    problem(client.put(ENG, json=RAISE, headers=WRITE_H), 403, "forbidden")
    problem(client.delete(ENG, params={"why": "x"}, headers=WRITE_H), 403, "forbidden")
    problem(client.post("/v1/policy/rollback", json={"version": 0, "why": "x"},
                        headers=WRITE_H), 403, "forbidden")
    assert client.get(ENG, headers=WRITE_H).status_code == 200


def test_an_org_restricted_token_gets_403_on_another_org_everywhere(
        start: Start, tmp_path: Any) -> None:
    client = _start(start, tmp_path)
    h = TENANT_H
    acme_status = "/v1/status/" + quote("org:acme", safe="")
    for resp in (
        check(client, headers=h),
        client.post("/v1/check:batch", json={"items": [
            {"subject": {**ALICE, "org": "rl"}}, {"subject": ALICE}]}, headers=h),
        client.post("/v1/commit", json={"org": "acme", "reservation_id": "r1",
                                        "actual": {"cost": "1"}}, headers=h),
        client.post("/v1/release", json={"org": "acme", "reservation_id": "r1"}, headers=h),
        client.post("/v1/record", json={"subject": ALICE, "actual": {"input_tokens": 1},
                                        "request_id": "q1"}, headers=h),
        client.get(acme_status, headers=h),
        client.get("/v1/usage", params={"org": "acme", "by": "agent"}, headers=h),
        client.get("/v1/policy/effective", params={"org": "acme", "agent": "gpt"}, headers=h),
        client.get("/v1/ui/tree", params={"org": "acme"}, headers=h),
        client.get(ENG, headers=h),
        client.put(ENG, json=RAISE, headers=h),
        client.delete(ENG, params={"why": "x"}, headers=h),
        client.get("/v1/policy/versions", headers=h),
        client.post("/v1/policy/rollback", json={"version": 0, "why": "x"}, headers=h),
        client.get("/v1/audit", params={"org": "acme"}, headers=h),
        client.get("/metrics", headers=h),
    ):
        assert problem(resp, 403, "forbidden")["detail"].startswith("token 'tenant' is "
                                                                   "restricted to org 'rl'")
    own = {**ALICE, "org": "rl", "team": None}
    own = {k: v for k, v in own.items() if v is not None}
    assert check(client, subject=own, headers=h).status_code == 200
    assert client.get("/v1/ui/tree", params={"org": "rl"}, headers=h).status_code == 200
    assert client.get("/v1/audit", headers=h).status_code == 200
    put = client.put("/v1/limits/" + quote("org:rl", safe=""), json=RAISE, headers=h)
    assert put.status_code == 200 and put.json()["audit"]["who"] == "tenant"


def test_an_org_restricted_token_is_refused_by_the_envoy_service_on_another_org(
        fresh_redis: Any, clock: Any) -> None:
    # (the Envoy tests' server factory, driven by hand: its fixture name is taken here)
    starter = envoy.start.__wrapped__(fresh_redis, clock)  # type: ignore[attr-defined]
    make = next(starter)
    try:
        svc = make(tokens=parse_tokens(["tenant:t" + "q" * 20 + ":write:org=other",
                                        "envoy:w" + "y" * 20 + ":write"]))
        d = envoy.descriptor(**envoy.entries(rid="o1"))  # org acme
        refused = envoy.rpc_error(lambda: svc.call(d, token="t" + "q" * 20))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "restricted to org 'other'" in (refused.details() or "")
        assert svc.call(d, token="w" + "y" * 20).overall_code == envoy.OK
    finally:
        next(starter, None)


def test_policy_reloads_and_token_changes_are_audited(start: Start, tmp_path: Any) -> None:
    import time

    client, app = start(db_url=f"sqlite:///{tmp_path / 'admin.db'}",
                        tokens=parse_tokens([ADMIN]))
    assert app.state.server.reload_policy() is True
    deadline = time.monotonic() + 10
    while True:
        entries = client.get("/v1/audit", headers=ADMIN_H).json()["entries"]
        if any(e["action"] == "policy.reload" for e in entries):
            break
        assert time.monotonic() < deadline, entries
        time.sleep(0.05)
    tokens, reload = entries
    assert (tokens["action"], tokens["before"], tokens["after"]) == (
        "tokens.change", [], ["boss:admin"])
    assert reload["before"].startswith("sha256:") and reload["who"] == "sidecar"
    # a sidecar starting with other tokens is recorded too (never the secrets)
    other, _ = start(db_url=f"sqlite:///{tmp_path / 'admin.db'}",
                     tokens=parse_tokens([ADMIN, TENANT]))
    last = other.get("/v1/audit", headers=ADMIN_H).json()["entries"][-1]
    assert (last["action"], last["before"], last["after"]) == (
        "tokens.change", ["boss:admin"], ["boss:admin", "tenant:admin:org=rl"])
    assert "q" * 20 not in json.dumps(last)


def test_the_org_check_finds_the_token_even_if_the_gate_did_not_leave_it() -> None:
    from types import SimpleNamespace

    from budgetlimiter.server.auth import require_org
    from budgetlimiter.server.problems import Problem

    tenant = parse_tokens([TENANT])
    server = SimpleNamespace(config=SimpleNamespace(tokens=tenant))
    request = SimpleNamespace(scope={"state": {}},
                              headers={"authorization": TENANT_H["Authorization"]},
                              app=SimpleNamespace(state=SimpleNamespace(server=server)))
    require_org(request, "rl")
    with pytest.raises(Problem, match="restricted to org 'rl'"):
        require_org(request, "acme")
