"""``budgetlimiter serve --grpc-port``: the rate limit service inside the HTTP sidecar's
process and event loop, on the same limiter and policy (reloads included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from click.testing import CliRunner
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from budgetlimiter.cli.context import Context
from budgetlimiter.cli.serve import serve
from budgetlimiter.envoy import sidecar_hook
from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.testing import LiveServer

from .conftest import FakeClock
from .envoy_harness import OK, descriptor
from .servers import RedisServer
from .test_envoy_service import POLICY

pytestmark = pytest.mark.redis


def test_grpc_and_http_share_one_limiter_and_policy(fresh_redis: RedisServer,
                                                    clock: FakeClock, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(policy),
                                  redis_timeout=1.0), clock=clock)
    bound: list[int] = []  # port 0: the system picks a free one, no check-then-use race
    app.state.server.lifespan_hooks.append(sidecar_hook("127.0.0.1", 0, on_bound=bound.append))
    live = LiveServer(app, http="httptools").start()
    port = bound[0]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        def call(domain: str) -> Any:
            d = descriptor(org="acme", team="eng", user="alice", model="gpt",
                           request_id="side-1")
            return stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain=domain, descriptors=[d]), timeout=10)

        assert call("budget").overall_code == OK
        with httpx.Client(base_url=live.url, timeout=10) as http:
            team = http.get("/v1/status/" + quote("org:acme/team:eng", safe="")).json()
        assert [(x["used"], x["reserved"]) for x in team["limits"]] == [(0, 1000)]
        policy.write_text(POLICY.replace("domains: [budget]", "domains: [gateway]"))
        assert app.state.server.reload_policy()  # what SIGHUP does
        with pytest.raises(grpc.RpcError) as old:
            call("budget")
        assert old.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
        live.stop()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as probe, \
            pytest.raises(grpc.RpcError) as stopped:  # it stopped with the sidecar
        rls_pb2_grpc.RateLimitServiceStub(probe).ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="gateway"), timeout=2)
    assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE


def test_serve_grpc_port_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client
    import uvicorn

    from budgetlimiter.server import logs

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    obj = Context("memory://", "sqlite://", str(policy), "table")
    many = CliRunner().invoke(serve, ["--grpc-port", "9090", "--workers", "2"], obj=obj)
    assert many.exit_code == 2 and "--grpc-port needs --workers 1" in many.output
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(logs, "setup_logging", lambda level: None)
    monkeypatch.setattr(prometheus_client, "disable_created_metrics", lambda: None)
    result = CliRunner().invoke(serve, [], obj=obj, env={"BUDGETLIMITER_GRPC_PORT": "9090"})
    assert result.exit_code == 0, result.output
    assert len(seen["app"].state.server.lifespan_hooks) == 1
    seen.clear()
    assert CliRunner().invoke(serve, [], obj=obj).exit_code == 0
    assert seen["app"].state.server.lifespan_hooks == []


def test_sidecar_metrics_count_grpc_calls_decisions_and_settles(
        fresh_redis: RedisServer, clock: FakeClock, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(policy),
                                  redis_timeout=1.0), clock=clock)
    bound: list[int] = []  # port 0: the system picks a free one, no check-then-use race
    app.state.server.lifespan_hooks.append(sidecar_hook("127.0.0.1", 0, on_bound=bound.append))
    live = LiveServer(app, http="httptools").start()
    port = bound[0]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            entries = {"org": "acme", "team": "eng", "user": "alice", "model": "gpt",
                       "request_id": "metrics-1"}
            stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                domain="budget", descriptors=[descriptor(**entries)]), timeout=10)
            stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                domain="budget", descriptors=[descriptor(hits=700, **entries, phase="done")]),
                timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                    domain="nope", descriptors=[descriptor(**entries)]), timeout=10)
        with httpx.Client(base_url=live.url, timeout=10) as http:
            text = http.get("/metrics").text
    finally:
        live.stop()
    lines = set(text.splitlines())
    assert 'budgetlimiter_grpc_requests_total{code="OK",method="ShouldRateLimit"} 2.0' in lines
    assert ('budgetlimiter_grpc_requests_total{code="INVALID_ARGUMENT",method="ShouldRateLimit"}'
            ' 1.0') in lines
    assert 'budgetlimiter_decisions_total{kind="none",level="none",outcome="allowed"} 1.0' \
        in lines
    assert 'budgetlimiter_settles_total{op="commit",status="committed"} 1.0' in lines


def test_metrics_count_a_refused_token_by_its_grpc_code() -> None:
    import asyncio

    from budgetlimiter import AsyncBudgetLimiter, parse_policy
    from budgetlimiter.envoy import serve_grpc
    from budgetlimiter.server import parse_tokens
    from budgetlimiter.server.metrics import Metrics

    async def scenario() -> str:
        metrics = Metrics()
        limiter = AsyncBudgetLimiter(parse_policy(POLICY), "memory://")
        tokens = parse_tokens(["reader:readsecret-0123456789:read"], None)
        service = await serve_grpc(limiter, tokens=tokens, metrics=metrics)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = rls_pb2_grpc.RateLimitServiceStub(channel)
                for metadata in ((), (("authorization", "Bearer readsecret-0123456789"),)):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="budget"),
                                                   metadata=metadata, timeout=10)
        finally:
            await service.stop()
            await limiter.aclose()
        return metrics.render().decode()

    lines = set(asyncio.run(scenario()).splitlines())
    for code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        assert (f'budgetlimiter_grpc_requests_total{{code="{code}",method="ShouldRateLimit"}}'
                " 1.0") in lines
