"""The OpenTelemetry export (the ``otel`` extra): the same metrics as ``/metrics``, plus the
per-budget gauges, read through the SDK's in-memory metric reader from a live sidecar on a
real redis-server."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.otel import otel_lifespan
from budgetlimiter.server.testing import LiveServer

from . import test_server
from .test_server import ALICE

policy_file = test_server.policy_file
pytestmark = pytest.mark.redis


def otel_points(reader: InMemoryMetricReader) -> dict[tuple[str, frozenset], float]:
    data = reader.get_metrics_data()
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    out[(metric.name, frozenset(p.attributes.items()))] = p.value
    return out


def prometheus_points(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name[:-len("_total")] if s.name.endswith("_total") else s.name
            out[(name, frozenset(s.labels.items()))] = s.value
    return out


def test_otel_exports_the_same_metrics_and_the_budget_gauges(fresh_redis, clock, policy_file):
    clock.set(datetime(2026, 3, 10, 6, tzinfo=timezone.utc))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    app = create_app(ServerConfig(redis_url=fresh_redis.url, policy_path=str(policy_file),
                                  redis_timeout=1.0), clock=clock)
    app.state.server.lifespan_hooks.append(otel_lifespan(provider, interval=3600))
    live = LiveServer(app, http="httptools").start()
    try:
        with httpx.Client(base_url=live.url, timeout=10) as client:
            for _ in range(12):
                clock.advance(20 * 60)
                body = {"subject": ALICE, "actual": {"input_tokens": 100}}
                assert client.post("/v1/record", json=body).status_code == 200
                client.get("/v1/forecast/org:acme/team:eng")
            check = {"subject": ALICE, "estimate": {"input_tokens": 1, "output_tokens": 1}}
            assert client.post("/v1/check", json=check).json()["allowed"] is False
            prom = prometheus_points(client.get("/metrics").text)
        otel = otel_points(reader)
    finally:
        live.stop()
        provider.shutdown()
    team = frozenset({"org": "acme", "scope": "org:acme/team:eng", "metric": "cost",
                      "period": "day"}.items())
    for name in ("budgetlimiter_budget_used", "budgetlimiter_budget_limit",
                 "budgetlimiter_budget_projected", "budgetlimiter_budget_blocked",
                 "budgetlimiter_budget_forecast_exceeds"):
        assert otel[(name, team)] == prom[(name, team)], name
    assert otel[("budgetlimiter_budget_blocked", team)] == 1
    # $0.0012 by 10:00 at $0.0003 an hour, 14 hours to go
    assert otel[("budgetlimiter_budget_projected", team)] == pytest.approx(0.0054)
    assert otel[("budgetlimiter_scopes_blocked", frozenset({"org": "acme"}.items()))] == 1
    denied = frozenset({"outcome": "denied", "level": "team", "kind": "budget"}.items())
    assert otel[("budgetlimiter_decisions", denied)] == prom[("budgetlimiter_decisions", denied)]
    assert otel[("budgetlimiter_decisions", denied)] == 1
    # every family of /metrics has its OTel instrument (histograms as _count and _sum)
    prom_names = {name for name, _ in prom}
    otel_names = {name for name, _ in otel}
    assert {n for n in prom_names if not n.endswith("_bucket")} <= otel_names | {
        n for n in prom_names if n.endswith("_created")}
