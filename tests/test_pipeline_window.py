"""The pipeline window (``AsyncBudgetLimiter(pipeline_window=...)``, ``serve
--pipeline-window``): while the process is busy and calls overlap, a call waits up to the
window for others to share its Redis write; otherwise every call goes out at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from click.testing import CliRunner
from redis.exceptions import ConnectionError as RedisConnectionError

from budgetlimiter import AsyncBudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.cli import main as cli
from budgetlimiter.coalesce import Coalescer, Company
from budgetlimiter.engine.scripts import Registry
from budgetlimiter.server import ConfigError, ServerConfig

from .test_coalesce import FakeRedis, call


class BusyClock:
    """A process CPU clock that runs as fast as the wall clock (fully busy) or stands still."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy
        self.base = time.monotonic()

    def __call__(self) -> float:
        # twice the wall clock: a sample stays "busy" even when the test is preempted between
        # reading the wall clock and this one
        return 2 * (time.monotonic() - self.base) if self.busy else 0.0


def coalescer(window: float, busy: bool, **kwargs: Any) -> tuple[Coalescer, FakeRedis]:
    redis = FakeRedis()
    co = Coalescer(redis, Registry(), pipeline_window=window, **kwargs)
    co.company = Company(period=0.005, cpu=BusyClock(busy))
    return co, redis


async def warmed(window: float, busy: bool, **kwargs: Any) -> tuple[Coalescer, FakeRedis]:
    """A coalescer that sent one call a moment ago (so a window can open) and sees other
    callers around (overlap)."""
    co, redis = coalescer(window, busy, **kwargs)
    await co.submit(call("warm"))  # the first call: nothing overlapped yet, goes at once
    await asyncio.sleep(0.01)  # a CPU sample sees the process busy (or not)
    co.company.overlap = True  # as if other callers were around
    return co, redis


async def staggered(co: Coalescer, count: int, gap: float = 0.0
                    ) -> tuple[list[Any], list[float]]:
    """``count`` callers, one every ``gap`` seconds (0: one per loop turn, as grpc.aio hands
    calls over); their replies and waits."""
    waits: list[float] = []

    async def one(i: int) -> Any:
        if gap:
            await asyncio.sleep(i * gap)
        else:
            for _ in range(i):
                await asyncio.sleep(0)
        started = time.monotonic()
        reply = await co.submit(call(f"c{i}"))
        waits.append(time.monotonic() - started)
        return reply

    replies = await asyncio.gather(*(one(i) for i in range(count)))
    return replies, waits


def test_calls_trickling_into_a_busy_process_share_writes_and_wait_at_most_the_window() -> None:
    async def main() -> None:
        co, redis = await warmed(0.2, busy=True)
        replies, waits = await staggered(co, 10)  # one per loop turn
        assert replies == [f"c{i}" for i in range(10)]  # each its own reply
        assert redis.batches == [1, 10], redis.batches  # ten calls in one write
        assert max(waits) < 0.2 + 0.1  # the window (and a loop turn), not more
    asyncio.run(main())


def test_a_burst_goes_out_at_once_inside_the_window() -> None:
    async def main() -> None:
        co, redis = await warmed(0.5, busy=True)
        started = time.monotonic()
        # 64 callers in one loop turn (an HTTP server reading 64 requests, 64 tasks): the
        # next turn brings nobody, so waiting would only add latency
        replies = await asyncio.gather(*(co.submit(call(f"c{i}")) for i in range(64)))
        assert replies == [f"c{i}" for i in range(64)]
        assert time.monotonic() - started < 0.1  # not the 0.5 s window
        assert redis.batches == [1, 64]
    asyncio.run(main())


def test_an_idle_process_sends_every_call_at_once() -> None:
    async def main() -> None:
        co, redis = await warmed(0.2, busy=False)
        _, waits = await staggered(co, 10)  # trickling in, but nobody is busy
        assert len(redis.batches) > 3  # no gathering beyond what a loop turn brings
        assert max(waits) < 0.15  # nobody waited out the 200 ms window
    asyncio.run(main())


def test_a_lone_caller_never_waits_for_company_that_cannot_come() -> None:
    async def main() -> None:
        co, redis = coalescer(0.05, busy=True)
        started = time.monotonic()
        for i in range(20):  # each call waits for its answer before the next
            assert await co.submit(call(f"c{i}")) == f"c{i}"
        assert redis.batches == [1] * 20
        assert time.monotonic() - started < 0.5  # 20 windows would take 1 s
    asyncio.run(main())


def test_a_full_batch_leaves_before_the_window_ends() -> None:
    async def main() -> None:
        co, redis = await warmed(0.5, busy=True, max_batch=8)
        first = asyncio.ensure_future(co.submit(call("first")))  # waits: warm left < 0.5 s ago
        await asyncio.sleep(0.01)
        started = time.monotonic()
        rest = await asyncio.gather(*(co.submit(call(f"c{i}")) for i in range(7)))
        assert await first == "first" and rest == [f"c{i}" for i in range(7)]
        assert time.monotonic() - started < 0.1
        assert redis.batches == [1, 8]
    asyncio.run(main())


def test_closing_fails_what_still_gathers_and_every_later_call() -> None:
    async def main() -> None:
        co, redis = await warmed(0.5, busy=True)
        gathering = co.submit(call("late"))  # e.g. a request still being handled at shutdown
        await asyncio.sleep(0.01)
        assert not gathering.done()
        co.close()
        with pytest.raises(RedisConnectionError, match="closed"):
            await gathering
        with pytest.raises(RedisConnectionError, match="closed"):
            await co.submit(call("after"))
        await asyncio.sleep(0.01)
        assert redis.batches == [1]  # nothing sent after the close
    asyncio.run(main())


def test_the_window_is_off_by_default_and_bounded() -> None:
    assert Coalescer(FakeRedis(), Registry()).window == 0.0
    for bad in (-0.001, 1.5):
        with pytest.raises(ValueError, match="pipeline_window"):
            Coalescer(FakeRedis(), Registry(), pipeline_window=bad)
    with pytest.raises(ConfigError, match="pipeline window"):
        ServerConfig(pipeline_window=0.2).validate()
    assert ServerConfig(pipeline_window=0.002).validate().pipeline_window == 0.002


def test_serve_refuses_a_window_out_of_range_by_name(tmp_path: Any) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\norgs: {acme: {limits: []}}\n")
    result = CliRunner().invoke(cli, ["--policy", str(policy), "serve",
                                      "--pipeline-window", "-1"])
    assert result.exit_code == 2
    assert "pipeline window" in result.output


def test_company_turns_busy_near_a_full_core_and_idle_again_below_seven_tenths() -> None:
    used = [0.0]
    company = Company(period=0.01, cpu=lambda: used[0])
    clock = [company._since]

    def period(share: float, overlap: bool = True) -> bool:
        company.overlap = company.overlap or overlap
        clock[0] += 0.01
        used[0] += share * 0.01
        return company.worth_waiting(clock[0])

    assert period(0.8) is False  # not yet near saturation: nobody waits
    assert period(1.0) is True
    assert period(0.8) is True  # between the thresholds: stays busy (the window saves CPU)
    assert period(0.3) is False
    assert period(1.0) is True
    assert company.worth_waiting(clock[0] + 0.001) is True  # within the period: unchanged
    assert period(1.0, overlap=False) is False  # nothing overlapped lately: a lone caller


POLICY = parse_policy("""
version: 1
orgs:
  acme:
    limits: [{metric: invocations, period: day, amount: 1000000}]
""")


async def callers(limiter: AsyncBudgetLimiter, window_busy: bool) -> int:
    """20 callers, each 5 checks and commits with a millisecond between them; the writes."""
    assert limiter.coalescer is not None
    limiter.coalescer.company = Company(period=0.005, cpu=BusyClock(window_busy))
    alice = Subject("acme", "gpt-4o", user="alice")
    await limiter.check(alice, Usage(), reservation_id="warm")  # scripts, connection
    await asyncio.sleep(0.01)
    before = limiter.coalescer.pipelines

    async def one(caller: int) -> None:
        await asyncio.sleep(caller * 0.0003)
        for k in range(5):
            decision = await limiter.check(alice, Usage(), reservation_id=f"r{caller}-{k}")
            assert decision.allowed and decision.reservation is not None
            await asyncio.sleep(0.001)
            await limiter.commit(decision.reservation, Usage())
            await asyncio.sleep(0.001)

    await asyncio.gather(*(one(i) for i in range(20)))
    org = next(s for s in await limiter.status(alice) if s.scope.team is None
               and s.scope.user is None and s.scope.agent is None)
    assert (org.used, org.reserved) == (100, 1)  # each counted once (+ the warm check)
    return limiter.coalescer.pipelines - before


@pytest.mark.redis
def test_a_busy_client_shares_writes_on_a_real_redis_and_counts_exactly(fresh_redis: Any) -> None:
    async def main() -> tuple[int, int]:
        writes = []
        for window in (0.0, 0.02):
            await_flush = AsyncBudgetLimiter(POLICY, fresh_redis.url)
            await await_flush.redis.flushdb()
            await await_flush.aclose()
            limiter = AsyncBudgetLimiter(POLICY, fresh_redis.url, pipeline_window=window)
            try:
                writes.append(await callers(limiter, window_busy=True))
            finally:
                await limiter.aclose()
        return writes[0], writes[1]

    without, within = asyncio.run(main())
    # 200 calls; without the window each loop turn's calls share a write, with it a busy
    # process gathers 20 ms of them
    assert within < without / 2, (without, within)


@pytest.mark.redis
def test_closing_waits_for_the_calls_gathering_in_the_window(fresh_redis: Any) -> None:
    async def main() -> None:
        limiter = AsyncBudgetLimiter(POLICY, fresh_redis.url, pipeline_window=0.3)
        assert limiter.coalescer is not None
        alice = Subject("acme", "gpt-4o", user="alice")
        await limiter.check(alice, Usage())
        limiter.coalescer.company = Company(period=0.005, cpu=BusyClock(True))
        await asyncio.sleep(0.01)
        limiter.coalescer.company.overlap = True  # as if other callers were around
        pending = asyncio.ensure_future(limiter.check(alice, Usage()))
        await asyncio.sleep(0.01)
        assert not pending.done()  # gathering: the first call left less than 0.3 s ago
        await limiter.aclose()
        assert (await pending).allowed  # answered, not dropped by the close
        assert limiter.coalescer._wire is None  # and no connection opened after it
    asyncio.run(main())
