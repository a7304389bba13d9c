"""What the sidecar says about limits (issue #16): a refusal names what it needed, a rate limit
has one rate and one burst in the body, the headers and the effective policy, an admitted check
has one shape, and a check without an estimate is one invocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import test_server
from .test_server import Start, check, problem

start = test_server.start  # the fixture, with this module's policy_file

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
  copilot: {per_invocation: "0.04"}
orgs:
  acme:
    teams:
      eng:
        limits:
          - {metric: cost, amount: "0.001", period: day}
      ops:
        limits:
          - {metric: cost, amount: "1", period: day}
          - {metric: invocations, amount: 3, period: day}
  rl:
    rates:
      - {metric: requests, limit: 2, per: second, burst: 4}
"""
ALICE = {"org": "acme", "team": "eng", "user": "alice", "agent": "gpt"}
RL = {"org": "rl", "agent": "gpt"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_a_refusal_names_what_it_needed(start: Start) -> None:
    client, _ = start()
    denied = check(client, 300, 400).json()  # 300 + 800 micro-USD > 0.001 USD
    b = denied["blocked_by"]
    assert denied["allowed"] is False and b["scope"] == "org:acme/team:eng"
    assert (b["limit"], b["used"], b["reserved"], b["requested"], b["burst"]) == (
        "0.001000", "0.000000", "0.000000", "0.001100", None)
    resp = check(client, 300, 400, params={"http_status": "true"})
    doc = problem(resp, 429, "budget_exceeded")
    assert doc["decision"]["blocked_by"]["requested"] == "0.001100"
    assert "requested 0.001100" in doc["detail"]


def test_a_rate_limit_has_one_rate_and_one_burst_everywhere(start: Start) -> None:
    client, _ = start()
    codes = [check(client, 1, 0, RL, params={"http_status": "true"}) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 200, 429]  # a bucket of 4
    refused = problem(codes[-1], 429, "rate_limited")["decision"]["blocked_by"]
    assert (refused["limit"], refused["burst"], refused["taken"], refused["requested"]) == (
        2, 4, 4, 1)
    assert codes[-1].headers["ratelimit-policy"] == '"org:rl|invocations|per second";q=2;w=1'
    assert codes[-1].headers["ratelimit"].startswith('"org:rl|invocations|per second";r=0;t=')
    (status,) = client.get("/v1/status/org:rl").json()["limits"]
    assert (status["limit"], status["burst"], status["taken"], status["remaining"]) == (
        2, 4, 4, 0)
    eff = client.get("/v1/policy/effective", params={"org": "rl", "agent": "gpt"}).json()
    (rate,) = eff["scopes"][0]["rates"]
    assert (rate["limit"], rate["burst"], rate["per"]) == (2, 4, "second")


def test_an_admitted_check_reports_taken_only(start: Start) -> None:
    client, _ = start()
    for doc in (check(client, 10, 0).json(),
                client.post("/v1/check:batch", json={"items": [
                    {"subject": ALICE, "estimate": {"input_tokens": 10}}]}
                            ).json()["decisions"][0],
                check(client, 1, 0, RL).json()):
        assert doc["allowed"] is True and doc["limits"]
        for limit in doc["limits"]:
            assert limit["used"] is None and limit["reserved"] is None, limit
            assert limit["taken"] not in (None, 0, "0.000000")
    # status reads split them
    for limit in client.get("/v1/status/org:acme%2Fteam:eng").json()["limits"]:
        assert limit["used"] is not None and limit["reserved"] is not None


def test_a_check_without_an_estimate_is_one_invocation(start: Start) -> None:
    client, _ = start()
    carol = {"org": "acme", "team": "ops", "user": "carol", "agent": "copilot"}
    no_estimate = client.post("/v1/check", json={"subject": carol}).json()
    assert no_estimate["allowed"] is True
    invocations = next(x for x in no_estimate["limits"] if x["metric"] == "invocations")
    assert (invocations["requested"], invocations["taken"]) == (1, 1)
    cost = next(x for x in no_estimate["limits"] if x["metric"] == "cost")
    assert cost["requested"] == "0.040000"  # priced per invocation
    empty = {"subject": carol, "estimate": {}}
    assert client.post("/v1/check", json=empty).json()["allowed"] is True
    batch = {"items": [{"subject": carol}, {"subject": carol, "estimate": {}}]}
    assert [d["allowed"] for d in client.post("/v1/check:batch", json=batch).json()[
        "decisions"]] == [True, False]
    refused = client.post("/v1/check", json={"subject": carol}).json()
    assert refused["allowed"] is False
    assert refused["blocked_by"]["metric"] == "invocations"
    assert (refused["blocked_by"]["requested"], refused["blocked_by"]["reserved"]) == (1, 3)
    doc = client.get("/openapi.json").json()["components"]["schemas"]
    assert "one invocation" in doc["CheckRequest"]["properties"]["estimate"]["description"]


@pytest.mark.parametrize("path,label", [
    ("/v1/limits/org%3Aacme%2Fteam%3Aeng", "/v1/limits/{scope}"),
    ("/v1/forecast/org%3Aacme", "/v1/forecast/{scope}"),
    ("/v1/status/org%3Abeta", "/v1/status/{scope}"),
    ("/v1/audit", "/v1/audit"), ("/v1/policy/versions", "/v1/policy/versions"),
    ("/v1/policy/rollback", "/v1/policy/rollback"), ("/v1/nope", "other")])
def test_every_route_gets_its_own_metrics_label_and_scopes_never_become_labels(path, label):
    # a scope in a label would be one time series per scope; the admin routes used to be
    # counted as "other"
    from budgetlimiter.server.middleware import route_label

    assert route_label(path) == label
