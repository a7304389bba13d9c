"""The Envoy mapping without any I/O: descriptors -> one call (subject, usage, phase, request
id), decisions -> RateLimitResponse, and the policy's ``envoy:`` section validation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from budgetlimiter import Decision, LimitStatus, Metric, PolicyError, Scope, Subject, Usage
from budgetlimiter.envoy.mapping import InvalidRequest, parse_request, split_tokens
from budgetlimiter.envoy.response import UINT32_MAX, decision_response, until_reset
from budgetlimiter.policy import EnvoyMapping, parse_policy

Unit = rls_pb2.RateLimitResponse.RateLimit
MAPPING = EnvoyMapping.model_validate({
    "domains": ["budget"], "estimate": {"input_tokens": 500, "output_tokens": 1000}})
ALICE = Subject("acme", "gpt-4o", team="eng", user="alice")


def descriptor(hits: int | None = None, **entries: str) -> Any:
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
                 for k, v in entries.items()])
    if hits is not None:
        d.hits_addend.value = hits
    return d


def request(*descriptors: Any, domain: str = "budget", hits: int = 0) -> Any:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=list(descriptors),
                                    hits_addend=hits)


FULL = {"org": "acme", "team": "eng", "user": "alice", "model": "gpt-4o", "request_id": "r1"}


def test_one_descriptor_is_one_subject_with_the_estimate_of_the_mapping() -> None:
    call = parse_request(request(descriptor(**FULL)), MAPPING)
    assert call.phase == "request" and call.subject == ALICE and call.request_id == "r1"
    assert call.usage == Usage(500, 1000, 1)
    assert call.covers == (frozenset({"team", "user", "agent"}),)


def test_descriptors_merge_and_unknown_entries_are_ignored() -> None:
    call = parse_request(request(descriptor(org="acme", remote_address="10.0.0.1"),
                                 descriptor(org="acme", team="eng", model="gpt-4o")), MAPPING)
    assert call.subject == Subject("acme", "gpt-4o", team="eng")
    assert call.request_id is None
    assert call.covers == (frozenset(), frozenset({"team", "agent"}))


def test_a_request_time_amount_raises_the_estimate_never_lowers_it() -> None:
    more = parse_request(request(descriptor(hits=4000, **FULL)), MAPPING)  # total_tokens
    assert more.usage == Usage(500, 3500, 1)
    less = parse_request(request(descriptor(hits=0, **FULL)), MAPPING)
    assert less.usage == Usage(500, 1000, 1)
    split = parse_request(request(descriptor(hits=2000, usage="input_tokens", **FULL),
                                  descriptor(hits=7, usage="requests", **FULL)), MAPPING)
    assert split.usage == Usage(2000, 1000, 7)


def test_the_request_hits_addend_applies_to_descriptors_without_their_own() -> None:
    call = parse_request(request(descriptor(**FULL), hits=5000), MAPPING)
    assert call.usage.total_tokens == 5000


def test_stream_done_counts_exactly_what_the_descriptors_carry() -> None:
    done = {**FULL, "phase": "done"}
    call = parse_request(request(descriptor(hits=1200, usage="input_tokens", **done),
                                 descriptor(hits=300, usage="output_tokens", **done)), MAPPING)
    assert call.phase == "stream_done" and call.usage == Usage(1200, 300, 1)
    total = parse_request(request(descriptor(hits=1500, **done)), MAPPING)
    assert total.usage == Usage(0, 1500, 1)  # total alone counts as output (dearer)
    both = parse_request(request(descriptor(hits=1500, **done),
                                 descriptor(hits=1200, usage="input_tokens", **done)), MAPPING)
    assert both.usage == Usage(1200, 300, 1)
    money = parse_request(request(descriptor(hits=2500, usage="micro_usd", **done)), MAPPING)
    assert money.usage.cost == Decimal("0.0025")


@pytest.mark.parametrize(("inp", "out", "total", "expected"), [
    (None, None, None, (0, 0)), (5, None, None, (5, 0)), (None, None, 9, (0, 9)),
    (None, 4, 9, (5, 4)), (2, 7, 9, (2, 7)),
])
def test_split_tokens(inp: int | None, out: int | None, total: int | None,
                      expected: tuple[int, int]) -> None:
    assert split_tokens(inp, out, total) == expected


@pytest.mark.parametrize(("req", "message"), [
    (request(descriptor(**FULL), domain="other"), "unknown domain 'other'"),
    (request(), "no descriptors"),
    (request(descriptor(team="eng", model="gpt-4o")), "org entry 'org'"),
    (request(descriptor(org="acme")), "agent entry 'model'"),
    (request(descriptor(org="acme", model="gpt\x00")), "control character"),
    (request(descriptor(org="", model="gpt")), "must not be empty"),
    (request(descriptor(org="acme", model="gpt", request_id="x" * 300)), "request id"),
    (request(descriptor(org="acme", model="a"), descriptor(org="evil", model="a")),
     "one request is one subject"),
    (request(descriptor(hits=100_000_001, **FULL)), "exceeds the mapping's max_hits_addend"),
    (request(descriptor(hits=5, **FULL), descriptor(hits=6, **FULL)), "disagrees"),
    (request(descriptor(usage="tokens", **FULL)), "a metric is one of"),
    (request(descriptor(phase="start", **FULL)), "only 'done'"),
    (request(descriptor(hits=5, usage="input_tokens", phase="done", **FULL),
             descriptor(hits=4, phase="done", **FULL)), "does not add up"),
    (request(*[descriptor(**FULL)] * 65), "at most 64"),
])
def test_bad_requests_are_refused_with_the_reason(req: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_request(req, MAPPING)


def test_default_agent_fills_a_missing_model() -> None:
    mapping = MAPPING.model_copy(update={"default_agent": "copilot"})
    assert parse_request(request(descriptor(org="acme")), mapping).subject.agent == "copilot"


# --------------------------------------------------------------------------- responses

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)


def limit(scope: str, period: str, limit_: int, taken: int, *, kind: str = "budget",
          mode: str = "hard", metric: Metric = Metric.COST) -> LimitStatus:
    resets = None if kind == "rate" else NOW + timedelta(hours=12)
    return LimitStatus(Scope.parse(scope), kind, metric, period, mode,  # type: ignore[arg-type]
                       limit_, taken, None, None, 0, resets, "ok")


def test_each_descriptor_reports_the_limit_that_binds_among_its_scopes() -> None:
    org = limit("org:acme", "month", 10_000_000, 1_000_000)
    team = limit("org:acme/team:eng", "day", 1000, 900)
    soft = limit("org:acme/team:eng/user:alice", "week", 100, 100, mode="soft")
    rate = limit("org:acme/agent:gpt-4o", "per second", 5, 1, kind="rate",
                 metric=Metric.INVOCATIONS)
    decision = Decision(True, ALICE, None, (org, team, soft, rate))
    call = parse_request(request(descriptor(org="acme"), descriptor(**FULL),
                                 descriptor(org="acme", model="gpt-4o")), MAPPING)
    response = decision_response(decision, call, NOW_MS)
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    org_s, full_s, agent_s = response.statuses
    assert (org_s.current_limit.name, org_s.current_limit.unit) == (
        "org:acme|cost|month", Unit.MONTH)
    assert full_s.current_limit.name == "org:acme/team:eng|cost|day"  # hard before soft
    assert (full_s.limit_remaining, full_s.duration_until_reset.seconds) == (100, 43200)
    assert agent_s.current_limit.unit == Unit.SECOND
    assert agent_s.current_limit.name == "org:acme/agent:gpt-4o|invocations|per second"
    headers = {h.key: h.value for h in response.response_headers_to_add}
    assert headers["RateLimit-Policy"] == '"org:acme/team:eng|cost|day";q=1000;w=86400'
    assert headers["RateLimit"] == '"org:acme/team:eng|cost|day";r=100;t=43200'
    assert not response.raw_body


def test_a_refusal_marks_the_descriptors_that_cover_the_blocking_scope() -> None:
    org = limit("org:acme", "month", 10, 1)
    team = limit("org:acme/team:eng", "day", UINT32_MAX * 2, UINT32_MAX * 2)
    decision = Decision(False, ALICE, None, (org, team), blocked_by=team, retry_after=42.5,
                        reason="budget_exceeded")
    call = parse_request(request(descriptor(org="acme"), descriptor(**FULL)), MAPPING)
    response = decision_response(decision, call, NOW_MS)
    codes = [s.code for s in response.statuses]
    assert response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert codes == [rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert response.statuses[1].current_limit.requests_per_unit == UINT32_MAX  # capped
    headers = {h.key: h.value for h in response.response_headers_to_add}
    assert headers["Retry-After"] == "43"
    assert b'"type":"budget_exceeded"' in response.raw_body


def test_degraded_refusal_has_no_limit_but_retry_after() -> None:
    decision = Decision(False, ALICE, None, (), reason="backend_unavailable", degraded=True)
    call = parse_request(request(descriptor(**FULL)), MAPPING)
    response = decision_response(decision, call, NOW_MS)
    assert [s.code for s in response.statuses] == [rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert not response.statuses[0].HasField("current_limit")
    assert b"backend_unavailable" in response.raw_body


@pytest.mark.parametrize(("period", "unit"), [
    ("minute", Unit.MINUTE), ("hour", Unit.HOUR), ("day", Unit.DAY), ("week", Unit.WEEK),
    ("month", Unit.MONTH), ("per second", Unit.SECOND), ("per minute", Unit.MINUTE),
    ("per hour", Unit.HOUR),
])
def test_every_period_has_an_exact_envoy_unit(period: str, unit: int) -> None:
    kind = "rate" if period.startswith("per ") else "budget"
    status = limit("org:acme", period, 10, 5, kind=kind)
    decision = Decision(True, ALICE, None, (status,))
    call = parse_request(request(descriptor(**FULL)), MAPPING)
    assert decision_response(decision, call, NOW_MS).statuses[0].current_limit.unit == unit


def test_a_rate_limit_resets_when_its_burst_drains() -> None:
    rate = limit("org:acme", "per minute", 60, 30, kind="rate")
    assert until_reset(rate, Decision(True, ALICE, None, (rate,)), NOW_MS) == 30


# --------------------------------------------------------------------------- policy section

def test_the_policy_section_is_validated_and_errors_name_the_field() -> None:
    policy = parse_policy("envoy: {domains: [gw], entries: {agent: x-ai-eg-model}}\n")
    assert policy.envoy is not None and policy.envoy.entries.agent == "x-ai-eg-model"
    assert parse_policy("timezone: UTC\n").envoy is None
    for text, where in [
        ("envoy: {hits_addend: tokens}", "envoy.hits_addend"),
        ("envoy: {entries: {org: a, user: a}}", "both read the descriptor key 'a'"),
        ("envoy: {domains: []}", "envoy.domains"),
        ("envoy: {max_hits_addend: 0}", "envoy.max_hits_addend"),
        ("envoy: {entries: {orgg: a}}", "envoy.entries.orgg: unknown field"),
        ("envoy: {estimate: {input_tokens: -1}}", "envoy.estimate.input_tokens"),
        ("envoy: {default_agent: ''}", "envoy.default_agent"),
    ]:
        with pytest.raises(PolicyError, match=where):
            parse_policy(text + "\n")


def test_a_repeated_shape_reads_each_request_id_and_still_refuses_bad_ones() -> None:
    # the second and later requests of one shape reuse the first reading (the shape cache):
    # the id is still read and checked per request, and what disagrees is still refused
    mapping = EnvoyMapping.model_validate({"domains": ["budget"]})
    first = parse_request(request(descriptor(**FULL)), mapping)
    second = parse_request(request(descriptor(**{**FULL, "request_id": "r2"})), mapping)
    assert (first.request_id, second.request_id) == ("r1", "r2")
    assert second.subject is first.subject and second.covers == first.covers
    with pytest.raises(InvalidRequest, match="'request_id'"):
        parse_request(request(descriptor(**{**FULL, "request_id": "bad\x00id"})), mapping)
    two = parse_request(request(descriptor(**FULL), descriptor(org="acme", request_id="r1")),
                        mapping)
    assert two.request_id == "r1"
    with pytest.raises(InvalidRequest, match="one request is one subject"):
        parse_request(request(descriptor(**FULL), descriptor(org="acme", request_id="r9")),
                      mapping)
    hits = parse_request(request(descriptor(hits=7, **FULL)), mapping)
    assert hits.usage != first.usage  # the amount is part of the shape
    other = parse_request(request(descriptor(**{**FULL, "user": "bob"})), mapping)
    assert other.subject.user == "bob"
