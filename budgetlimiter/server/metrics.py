"""Prometheus metrics of one sidecar process (a registry per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

from ..results import Decision

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The sidecar's metrics, all prefixed ``budgetlimiter_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "budgetlimiter_decisions", "Check decisions by outcome and blocking scope level.",
            ["outcome", "level", "kind"], registry=r)
        self.settles = Counter(
            "budgetlimiter_settles", "Commit, release and record results.",
            ["op", "status"], registry=r)
        self.requests = Counter(
            "budgetlimiter_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "budgetlimiter_http_request_duration_seconds", "HTTP request latency.",
            ["route", "method"], buckets=_BUCKETS, registry=r)
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

    def decision(self, d: Decision) -> None:
        """Count one decision."""
        if d.degraded:
            outcome = "degraded_allowed" if d.allowed else "degraded_denied"
        else:
            outcome = "allowed" if d.allowed else "denied"
        b = d.blocked_by
        level = b.scope.level if b is not None else "none"
        kind = b.kind if b is not None else "none"
        self.decisions.labels(outcome, level, kind).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
