"""Thresholds fire exactly once, judged on Redis's event stream itself (``P:{org}:ev``), not on
what the clients or the SQL outbox report: under concurrent commits from sync and asyncio
clients, and across a ``kill -9`` of Redis and the restore from SQL.

The org's month budget is $0.01 (10,000 micro-USD) with thresholds at 50 % and 100 %; every
call costs 100 micro-USD (100 input tokens at 1 micro-USD each), so the 50th commit crosses
50 % and the 100th crosses 100 %, whichever thread makes it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.engine.keys import KeySpace

from .clients import LoopThreadClient, make_client

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "0.01", period: month, thresholds: [50, 100]}
"""
CALL = Usage(input_tokens=100)  # 100 micro-USD


def stream(raw: Any) -> list[int]:
    """The thresholds on the org's event stream, in stream order."""
    return [int(f[b"th"]) for _, f in raw.xrange(KeySpace().events("acme"))]


def forget_connections(client: Any) -> None:
    """Drop the pooled connections to the killed Redis (as after any restart, the next call
    then connects afresh instead of failing once on a dead socket)."""
    if isinstance(client, LoopThreadClient):
        pool = client.wrapped.redis.connection_pool
        asyncio.run_coroutine_threadsafe(pool.disconnect(), client.loop).result(5)
    else:
        client.redis.connection_pool.disconnect()


def hammer(clients: list[Any], attempts_each: int) -> int:
    """Every client in two threads, each making ``attempts_each`` check + commit calls on
    its own user; returns the admissions the threads counted themselves."""
    admitted = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(bl: Any, user: str) -> None:
        s = Subject("acme", "gpt", user=user)
        try:
            for _ in range(attempts_each):
                d = bl.check(s, CALL)
                if d.allowed:
                    bl.commit(d.reservation, CALL)
                    with lock:
                        admitted[0] += 1
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(bl, f"u{i}-{j}"))
               for i, bl in enumerate(clients) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return admitted[0]


def test_each_threshold_is_on_the_stream_once_across_concurrent_commits_and_a_kill_9(
        make_store, redis_server, clock):
    redis_server.restart()
    store = make_store()
    policy = parse_policy(POLICY)
    # two sync and two asyncio clients, each in two threads: 8 concurrent callers
    clients = [make_client(kind, policy, redis_server.url, clock=clock, timeout=5)
               for kind in ("sync", "asyncio", "sync", "asyncio")]
    operator = BudgetLimiter(policy, redis_server.url, clock=clock, timeout=5)
    rec = Reconciler(operator, store)
    raw = redis_server.client()
    try:
        # 1. 8 callers x 8 attempts = 64 calls of 100: all fit (6,400 <= 10,000); the 50th
        #    commit crossed 50 %: one event on the stream
        assert hammer(clients, 8) == 64
        assert stream(raw) == [50]
        # 2. flushed to SQL (the events move to the outbox), then Redis is SIGKILLed
        rec.run_once()
        assert stream(raw) == []
        redis_server.kill()
        redis_server.start()
        for c in [*clients, operator]:
            forget_connections(c)
        # 3. the restore puts 6,400 back and knows 50 % fired: nothing new on the stream
        rec.restore_org("acme")
        assert stream(raw) == []
        # 4. 64 more attempts: exactly 36 fit (6,400 + 3,600 = 10,000), counted by the
        #    threads; the 100th commit overall crossed 100 %: that one event, and 50 % not again
        assert hammer(clients, 8) == 36
        assert stream(raw) == [100]
        (org,) = operator.status(Subject("acme", "gpt"))
        assert (org.used, org.reserved) == (10_000, 0)
    finally:
        raw.close()
        for c in [*clients, operator]:
            c.close()
