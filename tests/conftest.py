"""Shared fixtures: real redis-server processes, the backend table, a fake clock, policies."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from budgetlimiter import BudgetLimiter, Policy, parse_policy

from .servers import RedisServer, redis_required
from .sqlstores import make_store, store_url  # noqa: F401


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
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, emptied (restarted if a test killed it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server


@pytest.fixture(params=[
    pytest.param("memory", marks=pytest.mark.memory, id="memory"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
])
def backend_url(request: pytest.FixtureRequest) -> str:
    """The backend table: every test using it runs on memory:// and on a real redis-server."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    server: RedisServer = request.getfixturevalue("fresh_redis")
    return server.url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_limiter(backend_url: str, clock: FakeClock) -> Iterator[Callable[..., BudgetLimiter]]:
    made: list[BudgetLimiter] = []

    def make(policy: Policy | str, **kwargs: object) -> BudgetLimiter:
        pol = parse_policy(policy) if isinstance(policy, str) else policy
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("timeout", 2.0)
        limiter = BudgetLimiter(pol, backend_url, **kwargs)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()
