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
