"""The asyncio client's own Redis connection (budgetlimiter/wire.py) on a real redis-server:
replies reach their callers in order, errors stay with their call, a lost or late connection
fails what is on it with redis-py's exceptions and the next call gets a new connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import fakeredis
import hiredis
import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetlimiter import AsyncBudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.coalesce import Coalescer
from budgetlimiter.engine.calls import ScriptCall
from budgetlimiter.engine.scripts import Registry
from budgetlimiter.wire import Wire, can_take_over, open_wire

from .faults import FaultyProxy

pytestmark = pytest.mark.redis

POLICY = parse_policy("""
version: 1
outage: fail_closed
orgs:
  acme:
    limits: [{metric: invocations, period: day, amount: 1000000}]
""")
ALICE = Subject("acme", "gpt-4o", user="alice")


def packed(*args: Any) -> bytes:
    out: bytes = hiredis.pack_command(args)
    return out


async def send(wire: Wire, *commands: tuple[Any, ...]) -> list[Any]:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in commands]
    wire.write([packed(*c) for c in commands], futures)
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_concurrent_writes_get_their_own_replies_and_errors_stay_with_their_call(fresh_redis):
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(fresh_redis.url, socket_timeout=2)
        wire = await open_wire(client)
        batches = [[("ECHO", f"{b}-{i}") for i in range(50)] for b in range(20)]
        batches[7][13] = ("EVALSHA", "0" * 40, 0)  # no such script: its call only
        replies = await asyncio.gather(*(send(wire, *cmds) for cmds in batches))
        for b, got in enumerate(replies):
            for i, reply in enumerate(got):
                if (b, i) == (7, 13):
                    assert isinstance(reply, NoScriptError)
                else:
                    assert reply == f"{b}-{i}".encode()
        assert wire.busy == 0 and not wire.pending
        wire.close()
        await client.aclose()

    asyncio.run(main())


def test_a_lost_connection_fails_the_calls_on_it(flaky_redis: FaultyProxy):
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(flaky_redis.url, socket_timeout=5)
        wire = await open_wire(client)
        assert await send(wire, ("PING",)) == [b"PONG"]
        flaky_redis.lose_replies()
        waiting = asyncio.ensure_future(send(wire, ("PING",), ("PING",)))
        await asyncio.sleep(0.1)
        flaky_redis.down()  # the proxy cuts the connection: both calls learn it at once
        got = await asyncio.wait_for(waiting, 2)
        assert all(isinstance(r, RedisConnectionError) for r in got), got
        with pytest.raises(RedisConnectionError):
            await send(wire, ("PING",))
        await client.aclose()

    asyncio.run(main())


def test_a_reply_later_than_the_timeout_fails_every_call_on_the_connection(
        flaky_redis: FaultyProxy):
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(flaky_redis.url, socket_timeout=0.2)
        wire = await open_wire(client)
        flaky_redis.lose_replies()
        started = time.monotonic()
        got = await send(wire, ("PING",), ("PING",))
        assert 0.15 < time.monotonic() - started < 2
        assert all(isinstance(r, RedisTimeoutError) for r in got), got
        assert wire.closed is not None  # the order of later replies cannot be trusted
        await client.aclose()

    asyncio.run(main())


def test_readonly_means_the_master_moved_and_the_connection_is_dropped(fresh_redis):
    """After a failover the old master answers READONLY: redis-py's Sentinel connections
    disconnect and raise ConnectionError, so the next call asks for the master again."""
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(fresh_redis.url, socket_timeout=2)
        wire = await open_wire(client)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        wire.pending.append(fut)
        wire._writes.append((1, time.monotonic()))
        wire.reader.feed(b"-READONLY You can't write against a read only replica.\r\n")
        wire.data_received(b"")
        with pytest.raises(RedisConnectionError, match="READONLY"):
            await fut
        assert wire.closed is not None
        assert isinstance(ReadOnlyError("x"), Exception)
        await client.aclose()

    asyncio.run(main())


def test_the_client_reconnects_after_an_outage_and_decides_exactly(
        flaky_redis: FaultyProxy, fresh_redis):
    async def main() -> None:
        bl = AsyncBudgetLimiter(POLICY, flaky_redis.url, timeout=0.5)
        assert bl.coalescer is not None and bl.coalescer._use_wire
        for _ in range(10):
            assert (await bl.check(ALICE, Usage())).allowed
        flaky_redis.down()
        d = await bl.check(ALICE, Usage())
        assert not d.allowed and d.degraded
        flaky_redis.up()
        deadline = time.monotonic() + 10
        while bl.breaker.state == "open":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        decisions = await asyncio.gather(*(bl.check(ALICE, Usage()) for _ in range(64)))
        assert all(d.allowed and not d.degraded for d in decisions)
        status = await bl.status(ALICE)
        assert status[0].reserved == 74  # 10 + 64, each reserved once
        await bl.aclose()

    asyncio.run(main())


def test_script_flush_is_reloaded_over_the_driven_connection(fresh_redis):
    async def main() -> None:
        bl = AsyncBudgetLimiter(POLICY, fresh_redis.url, timeout=2)
        assert (await bl.check(ALICE, Usage())).allowed
        with fresh_redis.client() as c:
            c.script_flush()
        decisions = await asyncio.gather(*(bl.check(ALICE, Usage()) for _ in range(32)))
        assert all(d.allowed for d in decisions)
        assert (await bl.status(ALICE))[0].reserved == 33
        await bl.aclose()

    asyncio.run(main())


def test_clients_without_socket_connections_keep_redis_py_pipelines():
    assert not can_take_over(fakeredis.FakeAsyncRedis())
    assert not can_take_over(redis.asyncio.Redis(protocol=3))
    assert can_take_over(redis.asyncio.Redis())

    async def main() -> None:  # memory:// still decides through the coalescer
        bl = AsyncBudgetLimiter(POLICY, "memory://wire-test")
        assert bl.coalescer is not None and not bl.coalescer._use_wire
        assert (await bl.check(ALICE, Usage())).allowed
        await bl.aclose()

    asyncio.run(main())


def test_closing_the_client_closes_its_connection(fresh_redis):
    async def main() -> None:
        bl = AsyncBudgetLimiter(POLICY, fresh_redis.url, timeout=2)
        assert (await bl.check(ALICE, Usage())).allowed
        coalescer = bl.coalescer
        assert isinstance(coalescer, Coalescer) and coalescer._wire is not None
        wire = coalescer._wire
        host, port = wire.transport.get_extra_info("sockname")[:2]
        await bl.aclose()
        assert wire.closed is not None
        return f"{host}:{port}"

    mine = asyncio.run(main())
    with fresh_redis.client() as c:  # Redis no longer lists the client's connection
        deadline = time.monotonic() + 5
        while any(client["addr"] == mine for client in c.client_list()):
            assert time.monotonic() < deadline, c.client_list()
            time.sleep(0.02)


def test_registry_calls_go_out_as_evalsha(fresh_redis):
    """The coalescer packs ScriptCalls as EVALSHA of the registry's scripts."""
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(fresh_redis.url, socket_timeout=2)
        scripts = Registry.default()
        co = Coalescer(client, scripts)
        with fresh_redis.client() as c:
            c.script_load(scripts["check"].source)
        call = ScriptCall("check", ["a"], [1], lambda r: r, "acme", (), "x")
        with pytest.raises(Exception) as info:  # the script runs (and refuses the args)
            await co.submit(call)
        assert not isinstance(info.value, NoScriptError)
        co.close()
        await client.aclose()

    asyncio.run(main())


def test_a_call_that_cannot_be_packed_fails_alone(fresh_redis):
    """An argument Redis has no type for fails its own call at once; the others of the batch
    are answered (nothing hangs)."""
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(fresh_redis.url, socket_timeout=2)
        scripts = Registry.default()
        co = Coalescer(client, scripts)
        bad = ScriptCall("check", ["a"], [object()], lambda r: r, "acme", (), "x")
        good = ScriptCall("check", ["a"], [1], lambda r: r, "acme", (), "y")
        got = await asyncio.wait_for(asyncio.gather(co.submit(bad), co.submit(good),
                                                    return_exceptions=True), 5)
        assert isinstance(got[0], DataError), got
        assert isinstance(got[1], Exception) and not isinstance(got[1], DataError)  # answered
        co.close()
        await client.aclose()

    asyncio.run(main())
