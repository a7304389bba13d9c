"""Shared pieces: results, latency percentiles, timing loops, the benchmark policies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

ORG = "bench"
TEAM = "eng"
USER = "alice"
AGENT = "gpt-4o"
#: far above anything a run can reserve (micro-USD stays < 2^53): every check is admitted
AMOUNT_USD = "1000000000"
WARMUP_S = 0.3

#: called between the warm-up and the measured window (the runner resets Redis' command stats)
_mark_hook: Callable[[], None] | None = None


def set_mark_hook(hook: Callable[[], None] | None) -> None:
    global _mark_hook
    _mark_hook = hook


def mark() -> None:
    if _mark_hook is not None:
        _mark_hook()


@dataclass
class Result:
    """One line of the table."""

    name: str
    group: str
    rate: float = 0.0  #: decisions (or requests) per second
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    count: int = 0
    seconds: float = 0.0
    note: str = ""
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(latencies_ns: list[int]) -> tuple[float | None, float | None, float | None]:
    """p50, p99, p99.9 in microseconds."""
    if not latencies_ns:
        return None, None, None
    data = sorted(latencies_ns)
    n = len(data)

    def pct(p: float) -> float:
        return data[min(n - 1, int(p * n))] / 1000.0

    return pct(0.50), pct(0.99), pct(0.999)


def finish(result: Result, latencies_ns: list[int], decisions: int, elapsed_s: float) -> Result:
    result.count = decisions
    result.seconds = round(elapsed_s, 3)
    result.rate = decisions / elapsed_s if elapsed_s > 0 else 0.0
    result.p50_us, result.p99_us, result.p999_us = percentiles(latencies_ns)
    return result


def time_sync(result: Result, op: Callable[[], object], seconds: float,
              per_call: int = 1) -> Result:
    """Call ``op`` in a loop for ``seconds`` (after a warm-up); each call is ``per_call``
    decisions; latency is measured around each call. A call returning ``False`` (a decision
    that was not admitted) is not counted as a decision (see ``extra["not_admitted"]``)."""
    perf = time.perf_counter_ns
    end = perf() + int(WARMUP_S * 1e9)
    while perf() < end:
        op()
    mark()
    lat: list[int] = []
    append = lat.append
    failed = 0
    start = perf()
    end = start + int(seconds * 1e9)
    now = start
    while now < end:
        if op() is False:
            failed += 1
        t1 = perf()
        append(t1 - now)
        now = t1
    result.extra["not_admitted"] = failed * per_call
    return finish(result, lat, (len(lat) - failed) * per_call, (now - start) / 1e9)


async def time_async(result: Result, op: Callable[[], Awaitable[object]], concurrency: int,
                     seconds: float) -> Result:
    """``concurrency`` tasks each awaiting ``op`` in a loop; latency around each await; an
    ``op`` returning ``False`` is not counted as a decision (``extra["not_admitted"]``)."""
    perf = time.perf_counter_ns

    failed = 0

    async def worker(until: int, lat: list[int] | None) -> None:
        nonlocal failed
        while True:
            t0 = perf()
            if t0 >= until:
                return
            ok = await op()
            if lat is not None:
                lat.append(perf() - t0)
                if ok is False:
                    failed += 1

    warm_until = perf() + int(WARMUP_S * 1e9)
    await asyncio.gather(*(worker(warm_until, None) for _ in range(concurrency)))
    mark()
    lat: list[int] = []
    start = perf()
    until = start + int(seconds * 1e9)
    await asyncio.gather(*(worker(until, lat) for _ in range(concurrency)))
    elapsed = (perf() - start) / 1e9
    result.extra["not_admitted"] = failed
    return finish(result, lat, len(lat) - failed, elapsed)


def run_loop(coro: Awaitable[T]) -> T:
    """Run a coroutine on uvloop when installed (asyncio otherwise)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the dev environment
        return asyncio.run(coro)  # type: ignore[arg-type]
    out: T = uvloop.run(coro)  # type: ignore[arg-type]
    return out


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return "asyncio"
    return "uvloop"


# policies ----------------------------------------------------------------------------------
def _limit(period: str) -> dict[str, Any]:
    return {"metric": "cost", "amount": AMOUNT_USD, "period": period}


def policy_dict(depth: int = 4, extra_orgs: int = 0) -> dict[str, Any]:
    """A policy whose subject (bench, eng, alice, gpt-4o) has ``depth`` cost budgets:
    1 org, 2 + org agent, 3 + team, 4 + user (every user of the team), 5 + user agent.
    ``extra_orgs`` other orgs, each with a team with limits, that the subject never touches."""
    if not 1 <= depth <= 5:
        raise ValueError("depth must be 1..5")
    org: dict[str, Any] = {"limits": [_limit("month")]}
    if depth >= 2:
        org["agents"] = {AGENT: {"limits": [_limit("month")]}}
    team: dict[str, Any] = {}
    if depth >= 3:
        team["limits"] = [_limit("day")]
    if depth >= 4:
        user: dict[str, Any] = {"limits": [_limit("day")]}
        if depth >= 5:
            user["agents"] = {AGENT: {"limits": [_limit("day")]}}
        team["defaults"] = {"user": user}
    org["teams"] = {TEAM: team}
    orgs: dict[str, Any] = {ORG: org}
    for i in range(extra_orgs):
        orgs[f"other-{i:04d}"] = {
            "limits": [_limit("month")],
            "teams": {f"team-{i:04d}": {"limits": [_limit("day")]}},
        }
    return {
        "version": 1,
        "pricing": {AGENT: {"input_per_million": "2.50", "output_per_million": "10.00"}},
        "orgs": orgs,
    }


def make_policy(depth: int = 4, extra_orgs: int = 0) -> Any:
    from budgetlimiter.policy import policy_from_dict

    return policy_from_dict(policy_dict(depth, extra_orgs), source=f"bench-depth-{depth}")


def subject(user: str = USER) -> Any:
    from budgetlimiter import Subject

    return Subject(org=ORG, team=TEAM, user=user, agent=AGENT)


def estimate() -> Any:
    from budgetlimiter import Usage

    return Usage(input_tokens=1200, output_tokens=800)
