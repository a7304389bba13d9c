"""The asyncio auto-pipeliner on its own, with a scripted fake Redis: batch sizes, spreading
over connections, no waiting at low load, and errors kept per call."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from budgetlimiter.coalesce import Coalescer
from budgetlimiter.engine.calls import ScriptCall
from budgetlimiter.engine.scripts import Registry


class FakePipe:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        r = self.redis
        r.batches.append(len(self.commands))
        r.inflight += 1
        r.max_inflight = max(r.max_inflight, r.inflight)
        try:
            await asyncio.sleep(0.001)  # Redis is busy with this pipeline
            if r.fail_next:
                r.fail_next = False
                raise RedisConnectionError("connection lost")
            return [ResponseError("ERR boom") if cmd[-1] == "bad" else cmd[-1]
                    for cmd in self.commands]
        finally:
            r.inflight -= 1


class FakeRedis:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.inflight = 0
        self.max_inflight = 0
        self.fail_next = False

    def pipeline(self, transaction: bool = True) -> FakePipe:
        return FakePipe(self)


def call(tag: str) -> ScriptCall:
    return ScriptCall("check", ["k"], [tag], lambda reply: reply, "org")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_lone_call_goes_out_at_once_alone() -> None:
    async def main() -> None:
        redis = FakeRedis()
        co = Coalescer(redis, Registry.default())
        assert await co.submit(call("a")) == "a"
        assert redis.batches == [1]

    run(main())


def test_concurrent_calls_are_spread_over_the_connections_and_bounded() -> None:
    async def main() -> None:
        redis = FakeRedis()
        co = Coalescer(redis, Registry.default(), max_batch=10, max_inflight=4)
        replies = await asyncio.gather(*(co.submit(call(f"c{i}")) for i in range(64)))
        assert replies == [f"c{i}" for i in range(64)]  # each call gets its own reply
        assert sum(redis.batches) == 64 and max(redis.batches) <= 10
        # the first wave uses every connection instead of one big pipeline
        assert redis.batches[:4] == [10, 10, 10, 10]
        assert redis.max_inflight == 4

    run(main())


def test_spreading_without_a_cap_splits_evenly() -> None:
    async def main() -> None:
        redis = FakeRedis()
        co = Coalescer(redis, Registry.default(), max_batch=128, max_inflight=4)
        await asyncio.gather(*(co.submit(call(f"c{i}")) for i in range(64)))
        assert redis.batches == [16, 16, 16, 16]

    run(main())


def test_errors_stay_with_their_call() -> None:
    async def main() -> None:
        redis = FakeRedis()
        co = Coalescer(redis, Registry.default(), max_batch=4, max_inflight=2)
        results = await asyncio.gather(*(co.submit(call("bad" if i == 3 else f"c{i}"))
                                         for i in range(8)), return_exceptions=True)
        assert isinstance(results[3], ResponseError)
        assert [r for i, r in enumerate(results) if i != 3] == \
            [f"c{i}" for i in range(8) if i != 3]
        redis.fail_next = True  # a broken connection fails its own batch only
        results = await asyncio.gather(*(co.submit(call(f"d{i}")) for i in range(8)),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, RedisConnectionError)]
        assert len(failed) == 4 and results.count("d4") + results.count("d0") == 1

    run(main())
