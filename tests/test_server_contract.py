"""The OpenAPI document and the sidecar agree (issue #16), case by case: each request that the
fuzz test once found valid per the document but refused, or invalid but accepted, with the
answer it gets now. Refusals are problem documents naming the field, and change nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetlimiter.server.openapi import build_openapi
from budgetlimiter.server.params import ID_PATTERN, SCOPE_PATTERN, id_error, scope_error
from budgetlimiter.subject import Scope

from . import test_server
from .servers import RedisServer
from .test_server import ALICE, Start, check, problem, snapshot

start = test_server.start  # the fixtures, with the policy of tests/test_server.py
policy_file = test_server.policy_file

IDS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=256)


@settings(max_examples=300, deadline=None)
@given(org=IDS, team=st.none() | IDS, user=st.none() | IDS, agent=st.none() | IDS)
def test_the_scope_pattern_is_the_text_of_every_scope(org, team, user, agent):
    text = str(Scope(org, team, user, agent))
    assert re.fullmatch(SCOPE_PATTERN, text) and scope_error(text) is None
    assert Scope.parse(text) == Scope(org, team, user, agent)
    assert re.fullmatch(ID_PATTERN, org) and id_error(org) is None


@settings(max_examples=300, deadline=None)
@given(st.from_regex(SCOPE_PATTERN, fullmatch=True))
def test_every_text_the_scope_pattern_allows_parses(text):
    Scope.parse(text)


@pytest.mark.parametrize("text", [
    "00", "org:", "org:a/", "team:eng", "org:a/user:b/team:c", "org:a%zz", "org:a%FF",
    "org:a%C2%85", "org:a%0A", "org:%ED%A0%80", "org:a/b", "org:" + "x" * 257,
])
def test_scope_texts_the_pattern_refuses(text):
    assert re.fullmatch(SCOPE_PATTERN, text) is None and scope_error(text) is not None


def test_every_endpoint_is_in_the_document():
    paths = build_openapi("test")["paths"]
    assert {"/v1/ui/tree", "/openapi.json", "/v1/status/{scope}",
            "/v1/forecast/{scope}"} <= set(paths)
    (scope,) = paths["/v1/status/{scope}"]["get"]["parameters"]
    assert scope["schema"]["pattern"] == SCOPE_PATTERN
    (http_status, prefer) = paths["/v1/check"]["post"]["parameters"]
    assert http_status["schema"]["enum"] == ["true", "false"]
    assert prefer["schema"] == {"type": "string"}
    assert "409" in paths["/v1/commit"]["post"]["responses"]


@pytest.mark.redis
def test_valid_per_document_is_accepted(start: Start) -> None:
    client, _ = start(db_url="sqlite://")
    # an integral float is that integer (JSON Schema's integer)
    assert check(client, 3.0, 2.0).json()["allowed"] is True
    # ids of any printable characters; a scope in its documented text form
    odd = {"org": "acme", "team": "é/ü %41", "user": "😀", "agent": "gpt"}
    assert check(client, 1, 0, odd).json()["allowed"] is True
    scope = str(Scope("acme", "é/ü %41", "😀"))
    assert client.get("/v1/status/" + scope.replace("%", "%25")).status_code == 200
    assert client.get("/v1/forecast/" + scope.replace("%", "%25")).status_code == 200
    assert client.get("/v1/policy/effective", params={"org": "Å", "agent": "ü"}
                      ).status_code == 200
    assert client.get("/v1/ui/tree", params={"org": "acme"}).json()["org"] == "acme"
    # any range of days: a long one, and an empty one
    q = {"org": "acme", "by": "agent", "from": "2000-01-01"}
    assert client.get("/v1/usage", params=q).status_code == 200
    empty = client.get("/v1/usage", params={**q, "from": "2026-03-05", "to": "2026-03-01"})
    assert empty.status_code == 200 and empty.json()["rows"] == []
    trend = client.get("/v1/usage", params={"org": "acme", "by": "trend", "from": "0001-01-01",
                                            "to": "2026-03-01", "granularity": "month"}).json()
    assert trend["from"] == "2016-01-13" and len(trend["series"]) == 123  # 3,700 days back


@pytest.mark.redis
@pytest.mark.parametrize("method,path,kw,status,code,field", [
    ("POST", "/v1/check", {"params": {"http_status": "AAA"}, "json": {"subject": ALICE}},
     422, "invalid_input", "http_status"),
    ("POST", "/v1/check", {"params": {"http_status": "1"}, "json": {"subject": ALICE}},
     422, "invalid_input", "http_status"),
    ("GET", "/v1/status/00", {}, 422, "invalid_input", "scope"),
    ("GET", "/v1/status/org%3Aa%25zz", {}, 422, "invalid_input", "scope"),
    ("GET", "/v1/forecast/org%3Aa%25zz", {}, 422, "invalid_input", "scope"),
    ("GET", "/v1/policy/effective", {"params": {"org": "a\x05", "agent": "x"}},
     422, "invalid_id", "org"),
    ("GET", "/v1/policy/effective", {"params": {"org": "a", "agent": "x", "team": ""}},
     422, "invalid_id", "team"),
    ("GET", "/v1/policy/effective", {"params": [("org", "a"), ("org", "b"), ("agent", "x")]},
     422, "invalid_input", "org"),
    ("GET", "/v1/ui/tree", {}, 422, "invalid_input", "org"),
    ("GET", "/v1/usage", {"params": {"org": "acme", "by": "agent", "from": "20260301"}},
     422, "invalid_input", "from"),
    ("POST", "/v1/release", {"json": {"org": "acme", "reservation_id": "a\x90b"}},
     422, "invalid_id", "reservation_id"),
    ("POST", "/v1/check", {"json": {"subject": ALICE, "estimate": {"input_tokens": 10**12 + 1}}},
     422, "invalid_input", "estimate.input_tokens"),
    ("POST", "/v1/check", {"json": {"subject": ALICE, "estimate": {"cost": "1000000000"}}},
     422, "invalid_input", "estimate.cost"),
    ("POST", "/v1/commit", {"json": {"org": "acme", "reservation_id": "r",
                                     "actual": {"input_tokens": 1}}},
     422, "invalid_input", "body"),
    ("POST", "/v1/commit", {"json": {"org": "acme", "reservation_id": "r", "actual": {},
                                     "subject": {**ALICE, "org": "other"}}},
     409, "org_mismatch", "subject.org"),
    ("GET", "/v1/usage", {"params": {"org": "acme", "by": "trend", "scope": "org:other"}},
     409, "org_mismatch", "scope"),
])
def test_invalid_per_document_is_refused_and_changes_nothing(
        start: Start, fresh_redis: RedisServer, method: str, path: str, kw: dict[str, Any],
        status: int, code: str, field: str) -> None:
    client, _ = start(db_url="sqlite://")
    check(client)  # some state to compare against
    before = snapshot(fresh_redis)
    doc = problem(client.request(method, path, **kw), status, code)
    assert doc["detail"].startswith(field), doc
    assert snapshot(fresh_redis) == before
