"""Alerts end to end: hot path → Redis stream → reconciler → SQL outbox → signed webhook,
through a receiver that fails, goes down and comes back, and a deliverer that dies."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.alerts import Deliverer, WebhookSink, generate_secret
from budgetlimiter.durable.reconciler import Reconciler

from .webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "0.01", period: day}]
    teams:
      eng:
        limits:
          - {metric: invocations, amount: 10, period: day, thresholds: [10, 20, 30, 40, 50]}
"""


class Clock:
    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


def test_every_alert_arrives_once_through_failures(fresh_redis, make_store, clock):
    store = make_store()
    bl = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock, timeout=2)
    secret = generate_secret()
    receiver = WebhookReceiver(secret, mode="fail500")
    try:
        rec = Reconciler(bl, store, sinks=["webhook"])
        subject = Subject("acme", "gpt", team="eng", user="u")
        for i in range(6):
            bl.record(subject, Usage(input_tokens=2000), request_id=f"r{i}")
        assert rec.run_once().events == 9  # cost 50/75/90/100 + invocations 10..50
        event_ids = {e.id for e in store.events("acme")}
        sink = WebhookSink("webhook", receiver.url, secret, timeout=2)
        dclock = Clock(clock())
        d = Deliverer(store, {"webhook": sink}, clock=dclock, base_delay_s=1, max_delay_s=60,
                      lease_s=30)
        assert d.run_once().retried == 9  # 500s
        receiver.mode = "down"
        dclock.ms += 61_000
        assert d.run_once().retried == 9  # connection refused
        # a deliverer claims everything and dies before delivering
        dclock.ms += 61_000
        assert len(store.claim_due(dclock.ms, 100, 30_000, "doomed")) == 9
        receiver.mode = "ok"
        assert d.run_once().delivered == 0  # the dead worker's leases still hold
        dclock.ms += 31_000
        delivered = 0
        for _ in range(5):
            delivered += d.run_once().delivered
        assert delivered == 9
        assert receiver.received_ids() == event_ids
        assert all(r.valid for r in receiver.requests if r.status == 200)
        assert len(store.deliveries("delivered")) == 9
        assert store.deliveries("pending") == [] and store.deliveries("dead") == []
        # a second pass finds nothing: exactly once per event id
        assert rec.run_once().events == 0
        assert d.run_once().delivered == 0
    finally:
        receiver.stop()
        bl.close()
