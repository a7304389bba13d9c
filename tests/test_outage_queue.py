"""Usage kept in-process during an outage: replayed exactly once, by any successful round
trip and by a timer, with one replayer at a time; a process that cannot keep it says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from budgetlimiter import AsyncBudgetLimiter, BackendUnavailable, Subject, Usage, parse_policy

from .faults import own_execute, scripts_only
from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")
OPEN = BASIC.replace("timezone: UTC", "timezone: UTC\noutage: fail_open")


def _down(call):
    raise ConnectionError("down")


def org_used(bl) -> int:
    return next(s for s in bl.status(ALICE) if str(s.scope) == "org:acme").used


def test_queued_records_are_replayed_by_the_next_record(make_limiter):
    bl = make_limiter(OPEN)
    bl._execute = scripts_only(bl, _down)
    assert bl.record(ALICE, Usage(input_tokens=5), request_id="r1").status == "local"
    assert bl.queued == 1
    bl._execute = own_execute(bl)
    time.sleep(bl.breaker.open_for + 0.05)
    bl.breaker.success()
    assert bl.record(ALICE, Usage(input_tokens=7), request_id="r2").status == "recorded"
    deadline = time.monotonic() + 5  # asyncio replays in a task of its own, right after
    while bl.queued:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert org_used(bl) == 12


def test_queued_records_are_replayed_by_the_timer_when_no_call_comes(make_limiter):
    bl = make_limiter(OPEN)
    bl._execute = scripts_only(bl, _down)
    bl.record(ALICE, Usage(input_tokens=5), request_id="r1")
    bl._execute = own_execute(bl)
    deadline = time.monotonic() + 10
    while bl.queued:  # no call from here on: only the timer can replay it
        assert time.monotonic() < deadline, "the timer never replayed the queue"
        time.sleep(0.05)
    assert org_used(bl) == 5


def test_async_outage_queue_replays_every_record_once_under_concurrent_checks(backend_url):
    async def main() -> int:
        bl = AsyncBudgetLimiter(parse_policy(OPEN), backend_url, timeout=2.0)
        real = type(bl)._execute.__get__(bl)
        bl._execute = scripts_only(bl, _down)
        results = await asyncio.gather(*(
            bl.record(ALICE, Usage(input_tokens=1), request_id=f"q{i}") for i in range(150)))
        assert {r.status for r in results} == {"local"} and bl.queued == 150
        bl._execute = real
        await asyncio.sleep(bl.breaker.open_for + 0.05)
        # every successful check starts a replay: at most one runs, none pops another's entry
        decisions = await asyncio.gather(*(bl.check(ALICE, Usage(input_tokens=1))
                                           for _ in range(60)))
        assert all(d.allowed for d in decisions)
        for d in decisions:
            await bl.release(d.reservation)
        await bl.aclose()
        check = AsyncBudgetLimiter(parse_policy(OPEN), backend_url, timeout=2.0)
        used = next(s for s in await check.status(ALICE) if str(s.scope) == "org:acme").used
        await check.aclose()
        return used

    for _ in range(3):  # the race lost entries in 2 runs of 5 before
        url = backend_url if not backend_url.startswith("memory") else \
            f"memory://{uuid.uuid4().hex}"
        if not url.startswith("memory"):
            import redis

            redis.Redis.from_url(url).flushall()
        assert asyncio.run(main()) == 150


def test_without_an_outage_queue_a_record_during_an_outage_raises(make_limiter):
    bl = make_limiter(OPEN, outage_queue=False)
    bl._execute = scripts_only(bl, _down)
    with pytest.raises(BackendUnavailable, match="not stored"):
        bl.record(ALICE, Usage(input_tokens=5))
    assert bl.queued == 0


@pytest.mark.redis
def test_cli_record_with_redis_down_exits_3_and_claims_nothing(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(OPEN)
    env = {**os.environ, "BUDGETLIMITER_POLICY": str(policy),
           "BUDGETLIMITER_REDIS": "redis://127.0.0.1:1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "budgetlimiter"), "--policy", str(policy),
         "--redis", "redis://127.0.0.1:1", "record", "--org", "acme", "--team", "eng",
         "--user", "alice", "--agent", "gpt", "--input-tokens", "5"],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "local" not in proc.stdout
    assert "not stored" in proc.stderr
