"""Prometheus metrics of one sidecar process (a registry per app, so tests can build many)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    exposition,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ..coalesce import Coalescer
from ..results import Decision
from ..usage import MICROS_PER_USD
from .forecasts import GaugeSnapshot

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _unit(metric: str, units: int) -> float:
    """A gauge value (Prometheus keeps floats): USD for cost, the count otherwise."""
    return units / MICROS_PER_USD if metric == "cost" else float(units)


def _counter(name: str, doc: str, labels: list[str],
             counts: dict[tuple[str, str, str], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, count in list(counts.items()):  # (a copy: the loop may count meanwhile)
        family.add_metric(values, count)
    return family


class HotCounts:
    """The per-request metrics (HTTP requests and their latency, check decisions) as plain
    dicts of counts, turned into metric families when the registry is read (``/metrics``, the
    OpenTelemetry reader). prometheus_client's children take a lock per increment and walk
    the buckets in Python: a few microseconds per request, a few percent of a busy
    sidecar's CPU. Counts only grow, as a Counter's; the event loop is the only writer."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        #: per (route, method): requests per bucket (the last: above every bound), and the sum
        self.latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.decisions: dict[tuple[str, str, str], int] = {}
        #: the asyncio client's batcher (its own counts, read at scrape time), once started
        self.coalescer: Coalescer | None = None

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        found = self.latency.get((route, method))
        if found is None:
            found = self.latency[route, method] = ([0] * (len(_BUCKETS) + 1), [0.0])
        found[0][bisect_left(_BUCKETS, seconds)] += 1
        found[1][0] += seconds

    def decision(self, key: tuple[str, str, str]) -> None:
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def describe(self) -> list[Metric]:
        return []  # (registered without collecting at once)

    def collect(self) -> Iterator[Metric]:
        yield _counter("budgetlimiter_decisions",
                       "Check decisions by outcome and blocking scope level.",
                       ["outcome", "level", "kind"], self.decisions)
        yield _counter("budgetlimiter_http_requests", "HTTP requests by route, method and status.",
                       ["route", "method", "status"], self.requests)
        latency = HistogramMetricFamily(
            "budgetlimiter_http_request_duration_seconds", "HTTP request latency.",
            labels=["route", "method"])
        for (route, method), (counts, total) in list(self.latency.items()):
            running, buckets = 0, []
            for bound, count in zip((*_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric([route, method], buckets, total[0])
        yield latency
        co = self.coalescer
        if co is not None:  # calls per write = the first over the second
            for name, doc, value in (
                    ("budgetlimiter_redis_script_calls", "Script calls sent to Redis.", co.calls),
                    ("budgetlimiter_redis_writes",
                     "Writes (batches of script calls) sent to Redis.", co.pipelines),
                    ("budgetlimiter_pipeline_windows",
                     "Pipeline windows opened (calls held to share a write; see "
                     "--pipeline-window).", co.windows)):
                yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    """The sidecar's metrics, all prefixed ``budgetlimiter_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hot = HotCounts()
        r.register(self.hot)
        self.settles = Counter(
            "budgetlimiter_settles", "Commit, release and record results.",
            ["op", "status"], registry=r)
        self.grpc_requests = Counter(
            "budgetlimiter_grpc_requests",
            "gRPC calls (Envoy's rate limit service) by method and status code.",
            ["method", "code"], registry=r)
        self._grpc_children: dict[tuple[str, str], Counter] = {}
        self.redis_errors = Counter(
            "budgetlimiter_redis_errors", "Redis calls that failed (unreachable or timed out).",
            registry=r)
        self.reloads = Counter(
            "budgetlimiter_policy_reloads", "Policy reloads by result.", ["result"], registry=r)
        self.outstanding = Gauge(
            "budgetlimiter_reservations_outstanding",
            "Live reservations per declared org (read at scrape time).", ["org"], registry=r)
        self.backlog = Gauge(
            "budgetlimiter_alert_backlog", "Pending alert deliveries in the durable outbox.",
            registry=r)
        self.circuit_open = Gauge(
            "budgetlimiter_redis_circuit_open",
            "1 while the client's Redis circuit breaker is open or half-open.", registry=r)
        self.reconcile_lag = Gauge(
            "budgetlimiter_reconcile_lag_seconds",
            "Seconds since the org's last completed reconcile pass (by any sidecar).",
            ["org"], registry=r)
        self.reconcile_lease = Gauge(
            "budgetlimiter_reconcile_lease_holder",
            "1 per org for the holder of its reconcile lease; held_here=1 if this process.",
            ["org", "holder", "held_here"], registry=r)
        self.reconcile_ok = Gauge(
            "budgetlimiter_reconcile_ok",
            "1 when this sidecar's last reconcile pass reached Redis and the database.",
            registry=r)
        self.ready = Gauge("budgetlimiter_ready", "1 when the last readiness probe passed.",
                           registry=r)
        # per-budget gauges, read at scrape time for a bounded set of budgets (see
        # budgetlimiter.server.forecasts.Forecaster.snapshot); cost in USD
        labels = ["org", "scope", "metric", "period"]
        self.budget_used = Gauge(
            "budgetlimiter_budget_used", "Usage of a budget in its current period (cost: USD).",
            labels, registry=r)
        self.budget_limit = Gauge(
            "budgetlimiter_budget_limit", "Effective limit of a budget (cost: USD).",
            labels, registry=r)
        self.budget_projected = Gauge(
            "budgetlimiter_budget_projected",
            "Forecast usage at the end of the period (absent with too little data).",
            labels, registry=r)
        self.budget_blocked = Gauge(
            "budgetlimiter_budget_blocked", "1 while the budget blocks (hard limit reached).",
            labels, registry=r)
        self.budget_will_exceed = Gauge(
            "budgetlimiter_budget_forecast_exceeds",
            "1 while the forecast reaches the limit before the period ends.", labels,
            registry=r)
        self.scopes_blocked = Gauge(
            "budgetlimiter_scopes_blocked",
            "Scopes with at least one blocking budget, per declared org.", ["org"], registry=r)

        # labelled children by label values: ``labels()`` takes a lock and builds a tuple on
        # every call, which showed in the hot path's profile
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def decision(self, d: Decision) -> None:
        """Count one decision."""
        if d.degraded:
            outcome = "degraded_allowed" if d.allowed else "degraded_denied"
        else:
            outcome = "allowed" if d.allowed else "denied"
        b = d.blocked_by
        level = b.scope.level if b is not None else "none"
        kind = b.kind if b is not None else "none"
        self.hot.decision((outcome, level, kind))

    def settled(self, op: str, status: str) -> None:
        """Count one commit, release or record result."""
        self._child(self.settles, op, status).inc()

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        self.hot.http(route, method, status, seconds)

    def budgets(self, snapshot: GaugeSnapshot) -> None:
        """Replace the per-budget gauges by ``snapshot``'s (budgets that left it disappear)."""
        gauges = (self.budget_used, self.budget_limit, self.budget_projected,
                  self.budget_blocked, self.budget_will_exceed)
        for g in gauges:
            g.clear()
        for b in snapshot.budgets:
            labels = (b.org, b.scope, b.metric, b.period)
            self.budget_used.labels(*labels).set(_unit(b.metric, b.used))
            self.budget_limit.labels(*labels).set(_unit(b.metric, b.limit))
            if b.projected is not None:
                self.budget_projected.labels(*labels).set(_unit(b.metric, b.projected))
            self.budget_blocked.labels(*labels).set(1 if b.blocked else 0)
            self.budget_will_exceed.labels(*labels).set(1 if b.will_exceed else 0)
        self.scopes_blocked.clear()
        for org, count in snapshot.blocked_scopes.items():
            self.scopes_blocked.labels(org).set(count)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def grpc_call(self, method: str, code: str) -> None:
        """Count one gRPC call that ended with ``code`` (``OK``, ``INVALID_ARGUMENT``...)."""
        child = self._grpc_children.get((method, code))
        if child is None:  # (labels() costs a lock and a lookup: the hot path skips both)
            child = self._grpc_children[method, code] = self.grpc_requests.labels(method, code)
        child.inc()
