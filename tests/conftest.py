"""Shared fixtures: real redis-server processes, the test table (backend x client), a fake
clock, policies.

``make_limiter`` builds the client under test for every row of the table: backend
``memory`` or ``redis`` (a real redis-server) times client ``sync`` (``BudgetLimiter``) or
``asyncio`` (``AsyncBudgetLimiter`` driven through :class:`tests.clients.LoopThreadClient`);
ids read ``memory-sync``, ``redis-asyncio``. A test that cannot run on the asyncio client
says why with ``@pytest.mark.sync_only("reason")`` and gets the ``sync`` rows only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from budgetlimiter import Policy, parse_policy
from budgetlimiter.backends import connect_sync

from .clients import CLIENT_KINDS, make_client
from .faults import FaultyProxy
from .keyttl import keys_without_ttl
from .servers import RedisServer, dead_port, redis_required
from .sqlstores import make_store, store_url  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sync_only(reason): runs on the sync client only (the reason says why)")
    config.addinivalue_line(
        "markers", "keys_without_ttl(reason): the test leaves keys without a TTL on purpose "
        "(the key-TTL check after real-Redis tests is skipped; the reason says why)")


@pytest.hookimpl(trylast=True)  # after the backend params: ids read "memory-sync"
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The client axis: ``client_kind`` is ``sync`` and ``asyncio``, or ``sync`` alone for a
    test marked ``sync_only``."""
    if "client_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("sync_only")
    if marker is not None and not (marker.args or marker.kwargs.get("reason")):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: sync_only needs a reason")
    kinds = ["sync"] if marker is not None else list(CLIENT_KINDS)
    metafunc.parametrize("client_kind", kinds, ids=kinds)


class FakeClock:
    """Epoch-milliseconds clock the test moves by hand (no sleeping on the wall clock)."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
        self.now_ms = int(start.timestamp() * 1000)

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    def set(self, when: datetime) -> None:
        self.now_ms = int(when.timestamp() * 1000)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not redis_required():
        pytest.skip("BUDGETLIMITER_SKIP_REDIS=1")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer,
                request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The session's redis-server, emptied (restarted if a test killed it); after the test,
    no key may be left without a TTL but the structural ones (:func:`check_key_ttls`)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    with redis_server.client() as c:
        c.flushall()
    yield redis_server
    check_key_ttls(redis_server, request)


def check_key_ttls(server: RedisServer, request: pytest.FixtureRequest) -> None:
    """After a real-Redis test: fail if it left a key without a TTL that is not one of the
    structural keys (tests/keyttl.py), unless the test is marked ``keys_without_ttl``."""
    marker = request.node.get_closest_marker("keys_without_ttl")
    if marker is not None:
        if not (marker.args or marker.kwargs.get("reason")):
            raise pytest.UsageError(f"{request.node.nodeid}: keys_without_ttl needs a reason")
        return
    if server.proc is None or server.proc.poll() is not None:
        return  # the test killed Redis: nothing is left to leak
    client = server.client()
    try:
        leaked = keys_without_ttl(client)
    finally:
        client.close()
    if leaked:
        pytest.fail(f"keys without a TTL after the test (a key-space leak): {leaked[:20]}",
                    pytrace=False)


@pytest.fixture(params=[
    pytest.param("memory", marks=pytest.mark.memory, id="memory"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
])
def backend_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend table: every test using it runs on memory:// and on a real redis-server
    (where, after the test, no key may be left without a TTL but the structural ones)."""
    if request.param == "memory":
        yield f"memory://{uuid.uuid4().hex}"
        return
    server: RedisServer = request.getfixturevalue("fresh_redis")  # checks key TTLs after
    yield server.url


@pytest.fixture
def dead_port_number() -> Iterator[int]:
    """A loopback port nothing can listen on during the test (bound, never listening: a
    connection is refused at once, and no other process's server can appear there)."""
    with dead_port() as port:
        yield port


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class LimiterFactory:
    """``make(policy, client=None, **kwargs)``: a client of ``url``, of the row's kind unless
    ``client="sync"``/``"asyncio"`` says otherwise (e.g. a sync operator tool in an asyncio
    row); the fake clock and ``timeout=2.0`` (both clients: the asyncio default is another)
    unless given. Every client made is closed by :meth:`close_all`."""

    def __init__(self, url: str, clock: FakeClock, kind: str) -> None:
        self.url, self.clock, self.kind = url, clock, kind
        self.made: list[Any] = []

    def __call__(self, policy: Policy | str, *, client: str | None = None,
                 url: str | None = None, **kwargs: Any) -> Any:
        pol = parse_policy(policy) if isinstance(policy, str) else policy
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("timeout", 2.0)
        limiter = make_client(client or self.kind, pol, url or self.url, **kwargs)
        self.made.append(limiter)
        return limiter

    def close_all(self) -> None:
        for limiter in self.made:
            limiter.close()


@pytest.fixture
def make_limiter(backend_url: str, clock: FakeClock,
                 client_kind: str) -> Iterator[LimiterFactory]:
    """Builds the row's client: backend x client kind."""
    make = LimiterFactory(backend_url, clock, client_kind)
    yield make
    make.close_all()


@pytest.fixture
def flaky_redis(fresh_redis: RedisServer) -> Iterator[FaultyProxy]:
    """The session's redis-server behind a proxy that fails like a network on demand."""
    proxy = FaultyProxy(fresh_redis.port)
    yield proxy
    proxy.close()


@pytest.fixture
def make_flaky_limiter(flaky_redis: FaultyProxy, clock: FakeClock,
                       client_kind: str) -> Iterator[LimiterFactory]:
    """Like ``make_limiter``, on the real redis-server through :func:`flaky_redis` (pass
    ``url=flaky_redis.target_url`` for an observer that does not suffer the faults)."""
    make = LimiterFactory(flaky_redis.url, clock, client_kind)
    yield make
    make.close_all()


@pytest.fixture
def raw_redis(backend_url: str) -> Iterator[Any]:
    """A plain sync redis-py client of the row's backend, to look at keys as Redis has them
    (the key layout is documented in budgetlimiter/engine/keys.py)."""
    client = connect_sync(backend_url, timeout=2.0)
    yield client
    client.close()
