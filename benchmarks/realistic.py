"""A realistic scenario next to the best case, and ``limits`` at the same concurrency.

The best-case rows check one subject with one constant estimate against budgets that never
refuse. ``async-64-mixed`` checks 2,000 subjects (20 teams of 100 users, two agents) with
estimates drawn from a seeded distribution, commits every admitted call with an actual usage
of 60-110 % of its estimate (some overshoot), and runs against budgets small enough that a
part of the decisions are refused (a team and the heaviest users run out, one team has a
request rate limit; about 12 %). Every decision counts, admitted or refused; the refused share is
reported with the row. ``limits-async-64`` is the ``limits`` library on its asyncio Redis
storage with 64 tasks, 4 hits per decision: the same concurrency as ``async-64``.
"""

from __future__ import annotations

import random
from typing import Any

from .common import Result, loop_name, run_loop, time_async

ORG = "bench-mixed"
TEAMS = 20
USERS_PER_TEAM = 100
AGENTS = ("gpt-4o", "claude-sonnet")
SEED = 20261202


def mixed_policy() -> Any:
    """Org month budget, a day budget per team (one team's tiny, so it refuses), $2 a day
    per user by default (the heaviest users run out), a 200/s request rate on one team."""
    from budgetlimiter.policy import policy_from_dict

    teams: dict[str, Any] = {}
    for t in range(TEAMS):
        spec: dict[str, Any] = {
            "limits": [{"metric": "cost", "amount": "0.20" if t == 0 else "500", "period": "day"}],
            "defaults": {"user": {"limits": [{"metric": "cost", "amount": "2",
                                              "period": "day"}]}},
        }
        if t == 4:
            spec["rates"] = [{"metric": "invocations", "limit": 200, "per": "second"}]
        teams[f"t{t:02d}"] = spec
    return policy_from_dict({
        "version": 1,
        "pricing": {"gpt-4o": {"input_per_million": "2.50", "output_per_million": "10.00"},
                    "claude-sonnet": {"input_per_million": "3", "output_per_million": "15"}},
        "orgs": {ORG: {"limits": [{"metric": "cost", "amount": "100000", "period": "month"}],
                       "teams": teams}},
    }, source="bench-mixed")


def _workload(n: int) -> list[tuple[Any, Any, Any]]:
    """``n`` (subject, estimate, actual) triples from a seeded generator: users drawn with a
    skew (a few heavy users), prompt sizes log-uniform-ish."""
    from budgetlimiter import Subject, Usage

    rng = random.Random(SEED)
    subjects = [Subject(ORG, AGENTS[(t + u) % 2], team=f"t{t:02d}", user=f"u{t:02d}-{u:03d}")
                for t in range(TEAMS) for u in range(USERS_PER_TEAM)]
    rng.shuffle(subjects)  # the heavy users (the head of the skew) in every team
    out = []
    for _ in range(n):
        s = subjects[min(len(subjects) - 1, int(rng.paretovariate(1.2)) - 1)
                     if rng.random() < 0.1 else rng.randrange(len(subjects))]
        inp, outp = int(200 * 20 ** rng.random()), int(100 * 15 ** rng.random())
        scale = rng.uniform(0.6, 1.1)
        out.append((s, Usage(input_tokens=inp, output_tokens=outp),
                    Usage(input_tokens=int(inp * scale), output_tokens=int(outp * scale))))
    return out


def bench_async_mixed(url: str, seconds: float, concurrency: int = 64) -> Result:
    from budgetlimiter import AsyncBudgetLimiter

    work = _workload(50_000)

    async def main() -> Result:
        limiter = AsyncBudgetLimiter(mixed_policy(), url)
        position = 0
        refused = 0

        async def decide() -> bool:
            nonlocal position, refused
            subject, est, actual = work[position % len(work)]
            position += 1
            decision = await limiter.check(subject, est)
            if decision.reservation is not None:
                await limiter.commit(decision.reservation, actual)
            else:
                refused += 1
            return True  # a refusal is a decision too

        try:
            result = Result("async-64-mixed", "library",
                            note=f"2,000 subjects / 20 teams, seeded estimates, commits, "
                                 f"some refusals, {concurrency} tasks, {loop_name()}")
            await time_async(result, decide, concurrency, seconds)
            result.extra["refused_share"] = round(refused / max(1, position), 3)
            result.note += f", {100 * refused / max(1, position):.0f}% refused"
            return result
        finally:
            await limiter.aclose()

    return run_loop(main())


def bench_limits_async(url: str, seconds: float, concurrency: int = 64) -> Result:
    """``limits`` on its asyncio Redis storage (redis-py), 64 tasks, 4 hits per decision."""
    import limits
    from limits import RateLimitItemPerDay
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    async def main() -> Result:
        storage = RedisStorage(url.replace("redis://", "async+redis://", 1),
                               implementation="redispy")
        limiter = FixedWindowRateLimiter(storage)
        item = RateLimitItemPerDay(10**9)
        scopes = ["org", "org/team:eng", "org/team:eng/user:alice", "org/agent:gpt-4o"]

        async def decide() -> bool:
            ok = True
            for scope in scopes:
                ok = await limiter.hit(item, scope) and ok
            return ok

        if not await decide():
            raise RuntimeError("the limits library refused a hit")
        return await time_async(
            Result("limits-async-64", "reference",
                   note=f"limits {limits.__version__} asyncio storage (redis-py), FixedWindow, "
                        f"4 hits (not atomic), {concurrency} tasks"),
            decide, concurrency, seconds)

    return run_loop(main())
