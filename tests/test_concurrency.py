"""Concurrency: many asyncio tasks and several OS processes hammer one hard budget.

The proof is twofold: the total admitted never exceeds any limit (no overshoot on admission),
and every refusal was justified at the instant Redis decided it (no under-grant): the blocking
limit's used + reserved + estimate really exceeded it.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
from decimal import Decimal

import pytest

from budgetlimiter import AsyncBudgetLimiter, BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine.keys import KeySpace

# user limit larger than the team's: the team is what binds; org is $1.00
POLICY = """
timezone: UTC
pricing: {agent: {per_invocation: "0"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "1.00", period: day}]
    teams:
      eng:
        limits: [{metric: cost, amount: "0.60", period: day}]
        users:
          u0: {limits: [{metric: cost, amount: "5.00", period: day}]}
          u1: {limits: [{metric: cost, amount: "5.00", period: day}]}
      ops:
        limits: [{metric: cost, amount: "0.70", period: day}]
"""
LIMITS = {"org:acme": 1_000_000, "org:acme/team:eng": 600_000, "org:acme/team:ops": 700_000}


def subjects() -> list[Subject]:
    return [Subject("acme", "agent", team="eng", user="u0"),
            Subject("acme", "agent", team="eng", user="u1"),
            Subject("acme", "agent", team="ops", user="u2")]


def justified(decision, estimate_micros: int) -> bool:
    b = decision.blocked_by
    return b is not None and b.used + b.reserved + estimate_micros > b.limit


def _worker(url: str, seed: int, n: int, queue: mp.Queue) -> None:
    rng = random.Random(seed)
    bl = BudgetLimiter(parse_policy(POLICY), url, timeout=5)
    admitted: list[tuple[str, int]] = []
    unjustified = 0
    for _ in range(n):
        s = rng.choice(subjects())
        micros = rng.randint(1_000, 40_000)
        d = bl.check(s, Usage(cost=Decimal(micros) / 1_000_000))
        if d.allowed:
            # commit a random actual <= estimate (half of the time exactly the estimate)
            actual = micros if rng.random() < 0.5 else rng.randint(0, micros)
            bl.commit(d.reservation, Usage(cost=Decimal(actual) / 1_000_000))
            admitted.append((s.team or "", actual))
        elif not justified(d, micros):
            unjustified += 1
    bl.close()
    queue.put((admitted, unjustified))


def check_totals(limiter: BudgetLimiter) -> None:
    for s in subjects():
        for lim in limiter.status(s):
            if str(lim.scope) in LIMITS:
                assert lim.limit == LIMITS[str(lim.scope)]
                assert lim.used + lim.reserved <= lim.limit, lim


@pytest.mark.slow
@pytest.mark.redis
def test_processes_never_overshoot_and_never_refuse_what_fits(fresh_redis):
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fresh_redis.url, seed, 150, queue))
             for seed in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    admitted = [a for r in results for a in r[0]]
    assert sum(r[1] for r in results) == 0, "a refusal was not justified by the counters"
    by_team = {"eng": 0, "ops": 0}
    for team, micros in admitted:
        by_team[team] += micros
    assert by_team["eng"] <= 600_000 and by_team["ops"] <= 700_000
    assert sum(by_team.values()) <= 1_000_000
    # the budget was really used: what is left is smaller than the biggest request
    limiter = BudgetLimiter(parse_policy(POLICY), fresh_redis.url, timeout=5)
    check_totals(limiter)
    org = next(s for s in limiter.status(subjects()[0]) if str(s.scope) == "org:acme")
    assert org.used == sum(by_team.values())
    assert org.remaining < 40_000
    limiter.close()


def test_async_tasks_never_overshoot_and_never_refuse_what_fits(backend_url):
    async def main() -> None:
        bl = AsyncBudgetLimiter(parse_policy(POLICY), backend_url, timeout=5)
        rng = random.Random(1)
        unjustified = 0
        committed = 0

        async def one() -> None:
            nonlocal unjustified, committed
            s = rng.choice(subjects())
            micros = rng.randint(1_000, 40_000)
            d = await bl.check(s, Usage(cost=Decimal(micros) / 1_000_000))
            if d.allowed:
                await asyncio.sleep(0)
                await bl.commit(d.reservation, Usage(cost=Decimal(micros) / 1_000_000))
                committed += micros
            elif not justified(d, micros):
                unjustified += 1

        await asyncio.gather(*[one() for _ in range(400)])
        assert unjustified == 0
        assert committed <= 1_000_000
        for s in subjects():
            for lim in await bl.status(s):
                assert lim.used + lim.reserved <= lim.limit
        await bl.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# an independent judge: admissions counted by the clients themselves
# ---------------------------------------------------------------------------------------
UNITS = """
timezone: UTC
pricing: {agent: {per_invocation: "0"}}
orgs:
  acme:
    teams:
      eng:
        limits: [{metric: invocations, amount: 500, period: day}]
"""
UNIT_LIMIT = 500  # unit estimates fill it exactly: admissions must equal it, not approach it


def _unit_worker(url: str, kind: str, attempts: int, queue: mp.Queue) -> None:
    subject = Subject("acme", "agent", team="eng", user=f"{kind}-{mp.current_process().pid}")
    if kind == "sync":
        bl = BudgetLimiter(parse_policy(UNITS), url, timeout=5)
        admitted = 0
        for _ in range(attempts):
            d = bl.check(subject, Usage())
            if d.allowed:
                bl.commit(d.reservation, Usage())
                admitted += 1
        bl.close()
        queue.put(admitted)
        return

    async def main() -> int:
        abl = AsyncBudgetLimiter(parse_policy(UNITS), url, timeout=5)
        count = 0

        async def task(n: int) -> None:
            nonlocal count
            for _ in range(n):
                d = await abl.check(subject, Usage())
                if d.allowed:
                    await abl.commit(d.reservation, Usage())
                    count += 1

        await asyncio.gather(*(task(attempts // 16) for _ in range(16)))
        await abl.aclose()
        return count

    queue.put(asyncio.run(main()))


@pytest.mark.slow
@pytest.mark.redis
def test_clients_count_exactly_the_limit_in_admissions_and_each_threshold_fires_once(
        fresh_redis):
    """Four processes, two sync and two asyncio (16 tasks each), 1,280 unit checks on a limit
    of 500: the clients' own count of admissions is exactly 500 (one more is an overshoot,
    one fewer an under-grant), and Redis's event stream holds each threshold once."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_unit_worker, args=(fresh_redis.url, kind, 320, queue))
             for kind in ("sync", "asyncio", "sync", "asyncio")]
    for p in procs:
        p.start()
    admitted = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(admitted) == UNIT_LIMIT, admitted
    raw = fresh_redis.client()
    fired = [int(fields[b"th"]) for _, fields in raw.xrange(KeySpace().events("acme"))]
    assert sorted(fired) == [50, 75, 90, 100]  # the team's thresholds, each exactly once
    raw.close()
