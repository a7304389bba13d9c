"""Envoy's rate limit service against a real redis-server, called over real gRPC with the
xds-protos stubs: the hierarchy blocks at the right scope, a stream reserves then commits the
tokens reported at its end, a missing stream-done is refunded by the TTL, bad input and auth,
health, and the outage policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from budgetlimiter import Subject
from budgetlimiter.envoy import SERVICE_NAME
from budgetlimiter.server import parse_tokens

from .conftest import FakeClock
from .envoy_harness import OK, OVER_LIMIT, Service, descriptor
from .faults import FaultyProxy
from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
envoy:
  domains: [budget]
  estimate: {input_tokens: 0, output_tokens: 1000}
orgs:
  acme:
    teams:
      eng:
        limits: [{metric: total_tokens, amount: 3000, period: day}]
        users:
          alice: {limits: [{metric: total_tokens, amount: 2500, period: day}]}
          carol: {limits: [{metric: total_tokens, amount: 1000, period: day, mode: soft}]}
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")
TEAM = "org:acme/team:eng|total_tokens|day"
USER = "org:acme/team:eng/user:alice|total_tokens|day"

Start = Callable[..., Service]


@pytest.fixture
def start(fresh_redis: RedisServer, clock: FakeClock) -> Iterator[Start]:
    made: list[Service] = []

    def make(policy: str = POLICY, url: str | None = None, **kwargs: Any) -> Service:
        kwargs.setdefault("clock", clock)
        service = Service(policy, url or fresh_redis.url, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def entries(user: str = "alice", rid: str | None = None, **more: str) -> dict[str, str]:
    out = {"org": "acme", "team": "eng", "user": user, "model": "gpt", **more}
    if rid is not None:
        out["request_id"] = rid
    return out


def done(user: str = "alice", rid: str | None = None, **usage: int) -> list[Any]:
    """The stream-done descriptors: one per reported metric, as Envoy AI Gateway's
    llmRequestCosts give them."""
    return [descriptor(hits=n, usage=metric, **entries(user, rid, phase="done"))
            for metric, n in usage.items()]


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_the_hierarchy_blocks_at_the_right_scope(start: Start) -> None:
    svc = start()
    for rid in ("a1", "a2"):
        assert svc.call(descriptor(**entries(rid=rid))).overall_code == OK
    refused = svc.call(descriptor(org="acme"), descriptor(**entries(rid="a3")))
    assert refused.overall_code == OVER_LIMIT
    org_status, full = refused.statuses
    assert (org_status.code, full.code) == (OK, OVER_LIMIT)  # the org descriptor is not it
    assert full.current_limit.name == USER and full.limit_remaining == 500
    assert full.current_limit.requests_per_unit == 2500
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert headers["RateLimit"].startswith(f'"{USER}";r=500;t=')
    assert int(headers["Retry-After"]) > 0
    assert svc.limits(ALICE) == {TEAM: (0, 2000), USER: (0, 2000)}  # refused: nothing taken
    assert svc.call(descriptor(**entries("bob", "b1"))).overall_code == OK
    team_full = svc.call(descriptor(**entries("bob", "b2")))
    assert team_full.overall_code == OVER_LIMIT
    assert team_full.statuses[0].current_limit.name == TEAM
    assert team_full.statuses[0].limit_remaining == 0


def test_a_stream_reserves_then_commits_the_tokens_reported_at_its_end(start: Start) -> None:
    svc = start()
    ok = svc.call(descriptor(**entries(rid="s1")))
    assert ok.overall_code == OK and ok.statuses[0].current_limit.name == USER
    assert ok.statuses[0].limit_remaining == 1500  # the estimate is held
    assert svc.limits(ALICE) == {TEAM: (0, 1000), USER: (0, 1000)}
    answer = svc.call(*done(rid="s1", input_tokens=1200, output_tokens=300))
    assert answer.overall_code == OK
    assert svc.limits(ALICE) == {TEAM: (1500, 0), USER: (1500, 0)}
    svc.call(*done(rid="s1", input_tokens=1200, output_tokens=300))  # Envoy retried: once
    assert svc.limits(ALICE) == {TEAM: (1500, 0), USER: (1500, 0)}


def test_usage_is_priced_per_agent_exactly(start: Start) -> None:
    svc = start(POLICY.replace("limits: [{metric: total_tokens, amount: 3000, period: day}]",
                               'limits: [{metric: cost, amount: "1", period: day}]'))
    svc.call(descriptor(**entries(rid="p1")))
    svc.call(*done(rid="p1", input_tokens=1200, output_tokens=300))
    team = svc.run(svc.limiter.scope_status("org:acme/team:eng"))
    assert [(s.metric.value, s.used) for s in team] == [("cost", 1200 * 1 + 300 * 2)]


def test_a_missing_stream_done_is_refunded_by_the_reservation_ttl(start: Start,
                                                                   clock: FakeClock) -> None:
    svc = start()
    svc.call(descriptor(**entries(rid="lost")))
    assert svc.limits(ALICE) == {TEAM: (0, 1000), USER: (0, 1000)}
    clock.advance(61)  # reservation_ttl_seconds: 60
    assert svc.limits(ALICE) == {TEAM: (0, 0), USER: (0, 0)}
    svc.call(*done(rid="lost", output_tokens=700))  # late after all: counted once
    svc.call(*done(rid="lost", output_tokens=700))
    assert svc.limits(ALICE) == {TEAM: (700, 0), USER: (700, 0)}


def test_without_a_request_id_check_then_record(start: Start) -> None:
    svc = start()
    assert svc.call(descriptor(**entries())).overall_code == OK
    deadline = time.monotonic() + 10
    while svc.limits(ALICE)[USER] != (0, 0):  # the reservation is released at once
        assert time.monotonic() < deadline
        time.sleep(0.01)
    svc.call(*done(input_tokens=100, output_tokens=50))
    assert svc.limits(ALICE) == {TEAM: (150, 0), USER: (150, 0)}


def test_a_refused_request_counts_nothing_at_stream_done(start: Start) -> None:
    svc = start()
    svc.call(descriptor(**entries(rid="x1")))
    svc.call(descriptor(**entries(rid="x2")))
    assert svc.call(descriptor(**entries(rid="x3"))).overall_code == OVER_LIMIT
    svc.call(*done(rid="x3", output_tokens=500))  # sent for a refused request too
    assert svc.limits(ALICE) == {TEAM: (0, 2000), USER: (0, 2000)}


def test_a_request_id_is_checked_once(start: Start) -> None:
    svc = start()
    assert svc.call(descriptor(**entries(rid="d1"))).overall_code == OK
    again = rpc_error(lambda: svc.call(descriptor(**entries(rid="d1"))))
    assert again.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already checked" in (again.details() or "")
    assert svc.limits(ALICE) == {TEAM: (0, 1000), USER: (0, 1000)}  # one reservation
    svc.call(*done(rid="d1", output_tokens=10))
    assert svc.limits(ALICE) == {TEAM: (10, 0), USER: (10, 0)}


def test_soft_limits_answer_ok_and_count(start: Start) -> None:
    svc = start()
    carol = Subject("acme", "gpt", team="eng", user="carol")
    svc.call(descriptor(**entries("carol", "c1")))
    svc.call(*done("carol", "c1", output_tokens=900))
    over = svc.call(descriptor(**entries("carol", "c2")))  # 900 + 1000 > 1000, soft
    assert over.overall_code == OK
    svc.call(*done("carol", "c2", output_tokens=800))
    soft = "org:acme/team:eng/user:carol|total_tokens|day"
    assert svc.limits(carol)[soft] == (1700, 0)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: (descriptor(**entries()),), "unknown domain 'nope'"),
    (lambda: (descriptor(team="eng", model="gpt"),), "org entry 'org'"),
    (lambda: (descriptor(org="acme", model="gpt", user="bad\nid"),), "control character"),
    (lambda: (descriptor(hits=10**9, **entries()),), "max_hits_addend"),
    (lambda: (descriptor(org="acme", model="unpriced"),), "no pricing"),
    (lambda: tuple(done(rid="r", requests=1) + done(rid="other", requests=1)), "request_id"),
])
def test_bad_requests_get_invalid_argument_and_count_nothing(
        start: Start, fresh_redis: RedisServer, build: Callable[[], tuple[Any, ...]],
        message: str) -> None:
    svc = start()
    domain = "nope" if "domain" in message else "budget"
    error = rpc_error(lambda: svc.call(*build(), domain=domain))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert fresh_redis.client().keys("*") == []  # nothing written


def test_tokens_in_the_authorization_metadata(start: Start) -> None:
    tokens = parse_tokens(["envoy:w" + "y" * 20 + ":write", "dash:r" + "x" * 20 + ":read"])
    svc = start(tokens=tokens)
    d = descriptor(**entries(rid="t1"))
    assert rpc_error(lambda: svc.call(d)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert rpc_error(lambda: svc.call(d, token="w" + "z" * 20)).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    read = rpc_error(lambda: svc.call(d, token="r" + "x" * 20))
    assert read.code() == grpc.StatusCode.PERMISSION_DENIED and "read-only" in read.details()
    assert svc.call(d, token="w" + "y" * 20).overall_code == OK


def test_the_standard_health_service(start: Start) -> None:
    svc = start()
    stub = health_pb2_grpc.HealthStub(svc.channel)
    for name in ("", SERVICE_NAME):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def proxy(fresh_redis: RedisServer) -> Iterator[FaultyProxy]:
    p = FaultyProxy(fresh_redis.port)
    yield p
    p.close()


def test_redis_down_fail_closed_answers_over_limit(start: Start, proxy: FaultyProxy) -> None:
    svc = start(url=proxy.url, timeout=0.2)
    assert svc.call(descriptor(**entries(rid="u1"))).overall_code == OK
    proxy.down()
    refused = svc.call(descriptor(**entries(rid="u2")))
    assert refused.overall_code == OVER_LIMIT
    assert b"backend_unavailable" in refused.raw_body
    assert {h.key: h.value for h in refused.response_headers_to_add}["Retry-After"] == "1"


def test_redis_down_fail_open_answers_ok_and_keeps_the_stream_done_usage(
        start: Start, proxy: FaultyProxy) -> None:
    svc = start(POLICY.replace("timezone: UTC", "timezone: UTC\noutage: fail_open"),
                url=proxy.url, timeout=0.2)
    assert svc.call(descriptor(**entries(rid="o1"))).overall_code == OK
    proxy.down()
    assert svc.call(descriptor(**entries(rid="o2"))).overall_code == OK
    error = rpc_error(lambda: svc.call(*done(rid="o1", output_tokens=400)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # kept in-process, retried
    proxy.up()
    deadline = time.monotonic() + 20
    while True:
        try:
            if svc.limits(ALICE)[USER] == (400, 0):
                break
        except Exception:  # the circuit is still open: status reads fail fast too
            pass
        assert time.monotonic() < deadline, "the stream-done commit never landed"
        time.sleep(0.05)


def test_a_port_another_process_listens_on_is_an_error_not_a_shared_port() -> None:
    # grpc binds with SO_REUSEPORT by default: a second server on a taken port would start
    # and silently take part of the traffic
    import asyncio
    import socket

    from budgetlimiter import AsyncBudgetLimiter, parse_policy
    from budgetlimiter.envoy import serve_grpc

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a grpc server would
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]

    async def main() -> None:
        limiter = AsyncBudgetLimiter(parse_policy("orgs: {acme: {}}"), "memory://")
        try:
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
                await serve_grpc(limiter, port=taken)
        finally:
            await limiter.aclose()

    try:
        asyncio.run(main())
    finally:
        holder.close()
