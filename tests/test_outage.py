"""Redis outages, on both clients: bounded waits, the circuit breaker, fail_closed vs
fail_open, and usage counted during an outage recorded exactly once when Redis returns."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy

from .clients import make_client
from .faults import await_probe
from .policies import BASIC
from .servers import RedisServer

pytestmark = pytest.mark.redis
ALICE = Subject("acme", "gpt", team="eng", user="alice")
OPEN = BASIC.replace("timezone: UTC", "timezone: UTC\noutage: fail_open")


@pytest.fixture
def server():
    s = RedisServer().start()
    yield s
    s.stop()


@pytest.fixture
def connect(client_kind, clock):
    """``connect(policy_text, url, timeout=...)``: the row's client of a server the test kills
    and restarts; closed at the end."""
    made = []

    def make(policy: str, url: str, *, timeout: float):
        bl = make_client(client_kind, parse_policy(policy), url, clock=clock, timeout=timeout)
        made.append(bl)
        return bl

    yield make
    for bl in made:
        bl.close()


def team_used(bl) -> int:
    return next(x for x in bl.status(ALICE) if str(x.scope) == "org:acme/team:eng").used


def test_fail_closed_denies_and_the_circuit_opens(server, connect):
    bl = connect(BASIC, server.url, timeout=0.2)
    assert bl.check(ALICE, Usage(input_tokens=10)).allowed
    server.kill()
    for _ in range(3):
        d = bl.check(ALICE, Usage(input_tokens=10))
        assert not d.allowed and d.degraded and d.reason == "backend_unavailable"
    assert bl.breaker.state == "open"
    before = bl.breaker.short_circuited
    for _ in range(100):
        assert not bl.check(ALICE).allowed
    # each one answered by the open breaker, without touching the network (counted, not timed)
    assert bl.breaker.short_circuited - before == 100
    server.start()
    await_probe(bl)
    assert bl.check(ALICE, Usage(input_tokens=10)).allowed  # the probe closes the circuit
    assert bl.breaker.state == "closed"


def wait_replayed(bl, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while bl.queued:
        assert time.monotonic() < deadline, f"{bl.queued} operations never replayed"
        time.sleep(0.01)


def test_fail_open_counts_locally_and_records_once_when_back(server, connect):
    bl = connect(OPEN, server.url, timeout=0.2)
    d0 = bl.check(ALICE, Usage(input_tokens=100))  # a real reservation, committed in the outage
    bl.record(ALICE, Usage(input_tokens=1), request_id="before")
    server.kill()
    d = bl.check(ALICE, Usage(input_tokens=50))
    assert d.allowed and d.degraded and d.reservation is not None and d.reservation.local
    assert bl.commit(d.reservation, Usage(input_tokens=40)).status == "local"
    assert bl.commit(d0.reservation, Usage(input_tokens=30)).status == "local"
    assert bl.record(ALICE, Usage(input_tokens=20), request_id="r-out").status == "local"
    server.start()  # empty: the earlier usage is gone (the reconciler would restore it)
    assert team_used(connect(BASIC, server.url, timeout=2)) == 0  # nothing replayed yet
    await_probe(bl)
    assert bl.check(ALICE, Usage(input_tokens=1)).allowed  # success triggers the replay
    wait_replayed(bl)  # asyncio: in a task of its own, not ahead of this check's answer
    assert team_used(bl) == 40 + 30 + 20
    bl.return_leases()  # replays what is still kept in-process: nothing, so nothing twice
    assert bl.check(ALICE, Usage(input_tokens=1)).allowed
    assert team_used(bl) == 40 + 30 + 20
    assert bl.record(ALICE, Usage(input_tokens=20), request_id="r-out").status == "duplicate"


def test_an_unresponsive_redis_never_blocks_longer_than_the_timeout(connect):
    # a TCP server that accepts and never answers: the worst kind of dead Redis
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(100)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
                accepted.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    port = lsock.getsockname()[1]
    bl = connect(BASIC, f"redis://127.0.0.1:{port}/0", timeout=0.05)
    try:
        worst = 0.0
        for _ in range(20):
            started = time.perf_counter()
            d = bl.check(ALICE, Usage(input_tokens=1))
            worst = max(worst, time.perf_counter() - started)
            assert not d.allowed and d.degraded
        # without a socket timeout a call would wait forever on this server: 100 x the 50 ms
        # timeout tells the two apart and cannot trip on a loaded machine
        assert worst < 5.0, worst
        # it did connect (so the timeouts were real waits on a silent peer), and the breaker
        # stopped opening new connections
        assert 1 <= len(accepted) <= 5, len(accepted)
    finally:
        stop.set()
        t.join(2)
        bl.close()
        for c in accepted:
            c.close()
        lsock.close()


def test_reconciler_started_while_redis_is_down_recovers_on_its_own(make_store, clock):
    from budgetlimiter.durable.reconciler import Reconciler

    server = RedisServer()  # not started yet: Redis is down
    store = make_store()
    bl = BudgetLimiter(parse_policy(BASIC), server.url, clock=clock, timeout=0.2)
    rec = Reconciler(bl, store)
    stop = threading.Event()
    t = threading.Thread(target=rec.run_forever, args=(stop, 0.05))
    t.start()
    try:
        time.sleep(0.3)
        assert t.is_alive()  # no crash, no crash loop
        server.start()
        writer = BudgetLimiter(parse_policy(BASIC), server.url, clock=clock, timeout=2)
        writer.record(ALICE, Usage(input_tokens=123))
        deadline = time.monotonic() + 30  # a deadline, not a claim: passes as soon as flushed
        while time.monotonic() < deadline and not store.usage_rows("acme", "2026-01-01",
                                                              "2026-12-31"):
            time.sleep(0.05)
        rows = store.usage_rows("acme", "2026-01-01", "2026-12-31")
        assert sum(r.input_tokens for r in rows) == 123
        writer.close()
    finally:
        stop.set()
        t.join(10)
        bl.close()
        server.stop()


def test_a_half_open_probe_that_ends_without_an_answer_does_not_stick():
    """A probe met by an error reply or a cancellation frees the half-open slot; a probe that
    Redis answers with a refusal (credentials, ACL) closes the circuit: Redis is there."""
    from budgetlimiter.engine.breaker import CircuitBreaker

    now = [0.0]
    b = CircuitBreaker(threshold=1, reset_s=1.0, clock=lambda: now[0])
    b.failure()
    now[0] = 2.0
    assert b.allow() and not b.allow()  # one probe at a time
    b.abandon()
    assert b.allow()  # the next call may probe again
    b.success()
    assert b.state == "closed"
