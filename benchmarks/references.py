"""References measured on the same server in the same run: redis-benchmark running the
project's check script and a minimal 4-key script, raw redis-py loops, the ``limits`` library,
and the depth / policy-size scans of the check script."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from typing import Any

import redis

from .common import (
    ORG,
    Result,
    estimate,
    loop_name,
    make_policy,
    run_loop,
    subject,
    time_async,
    time_sync,
)

MINIMAL_SCRIPT = (
    "for i=1,4 do local v = redis.call('GET', KEYS[i]); redis.call('INCRBY', KEYS[i], 1) end "
    "return 1"
)
MINIMAL_KEYS = [f"bench:{{{ORG}}}:min:{i}" for i in range(1, 5)]
#: redis-benchmark replaces it with a random 12-digit number (``-r``): every call reserves under
#: a new id, as real checks do (new key, new member of the expiry set, sampled sweeps)
RANDOM_RESERVATION = "__rand_int__"
CLIENTS = 50


def check_command(client: redis.Redis, depth: int = 4, extra_orgs: int = 0) -> list[str]:
    """``EVALSHA sha numkeys KEYS... ARGV...`` of one real check of the 4-level subject, with a
    reservation id that redis-benchmark randomizes per call."""
    from budgetlimiter.engine.planner import Core
    from budgetlimiter.engine.scripts import Registry

    script = Registry.default()["check"]
    sha = client.script_load(script.source)
    if sha != script.sha:
        raise RuntimeError("SCRIPT LOAD returned another SHA than the registry's")
    call = Core(make_policy(depth, extra_orgs)).plan_check(
        subject(), estimate(), time.time_ns() // 1_000_000, reservation_id=RANDOM_RESERVATION)
    # the library's checks reserve under random ids, which skip the "id in use" test that a
    # caller's id pays (ARGV[4] = 2; see lua/check.lua): the reference is such a check
    call.args[3] = 0
    reply = client.evalsha(sha, len(call.keys), *call.keys, *call.args)
    if int(reply[0]) != 1:
        raise RuntimeError(f"the reference check was not admitted: {reply}")
    return ["EVALSHA", sha, str(len(call.keys)), *call.keys, *(str(a) for a in call.args)]


def minimal_command(client: redis.Redis) -> list[str]:
    sha = client.script_load(MINIMAL_SCRIPT)
    return ["EVALSHA", sha, "4", *MINIMAL_KEYS]


def _parse_csv(text: str) -> dict[str, float]:
    """The last data row of ``redis-benchmark --csv`` (its test name may hold newlines)."""
    header = ["rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms", "p95_latency_ms",
              "p99_latency_ms", "max_latency_ms"]
    for row in reversed(list(csv.reader(io.StringIO(text)))):
        if len(row) < 8:
            continue
        try:
            values = [float(v) for v in row[-7:]]
        except ValueError:
            continue
        return dict(zip(header, values, strict=True))
    raise RuntimeError(f"cannot parse redis-benchmark output: {text[-500:]!r}")


def _redis_benchmark(port: int, command: list[str], n: int, clients: int,
                     pipeline: int) -> dict[str, float]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark is not installed")
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", str(clients),
            "-r", "1000000000000",
            "-P", str(pipeline), "--csv", *command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {proc.stderr[-500:]}")
    return _parse_csv(proc.stdout)


def redis_benchmark(name: str, port: int, command: list[str], seconds: float, *,
                    clients: int = CLIENTS, pipeline: int = 1, group: str = "reference",
                    note: str = "", repeats: int = 3) -> Result:
    """Run ``command`` for about ``seconds`` in ``repeats`` runs and keep the median run (the
    machine is noisy; the fastest run would favour the cheapest commands, whose rate depends
    most on how the two cores happen to be shared). A short calibration run sizes ``-n``.
    Server time per call comes from ``INFO commandstats`` of the kept run."""
    calibration = 3000 if pipeline == 1 else 8000
    first = _redis_benchmark(port, command, calibration, clients, pipeline)
    n = max(2000, int(first["rps"] * seconds / repeats))
    probe = redis.Redis(port=port)
    runs: list[tuple[dict[str, float], int, int, float]] = []
    for _ in range(repeats):
        probe.config_resetstat()
        started = time.perf_counter()
        stats = _redis_benchmark(port, command, n, clients, pipeline)
        elapsed = time.perf_counter() - started
        calls, usec = server_usec(probe)
        runs.append((stats, calls, usec, elapsed))
    probe.close()
    runs.sort(key=lambda run: run[0]["rps"])
    stats, calls, usec, elapsed = runs[len(runs) // 2]
    result = Result(name, group, rate=stats["rps"], count=n, seconds=round(elapsed, 3),
                    p50_us=stats["p50_latency_ms"] * 1000, p99_us=stats["p99_latency_ms"] * 1000,
                    note=note or f"redis-benchmark -c {clients} -P {pipeline}")
    result.extra = {"avg_latency_ms": stats["avg_latency_ms"],
                    "max_latency_ms": stats["max_latency_ms"],
                    "server_us_per_decision": round(usec / n, 2) if n else None,
                    "server_calls": calls, "median_of": repeats,
                    "all_rps": [round(run[0]["rps"]) for run in runs]}
    return result


def bench_raw_sync(url: str, seconds: float) -> Result:
    from redis.utils import HIREDIS_AVAILABLE

    client = redis.Redis.from_url(url, socket_timeout=5.0)
    sha = client.script_load(MINIMAL_SCRIPT)
    keys = list(MINIMAL_KEYS)
    parser = "hiredis" if HIREDIS_AVAILABLE else "python parser"
    try:
        return time_sync(Result("raw-sync", "reference",
                                note=f"redis-py EVALSHA loop, minimal 4-key script, {parser}"),
                         lambda: client.evalsha(sha, 4, *keys), seconds)
    finally:
        client.close()


def bench_raw_async(url: str, seconds: float, concurrency: int = 64) -> Result:
    import redis.asyncio as aioredis

    async def main() -> Result:
        client = aioredis.Redis.from_url(url, socket_timeout=5.0)
        try:
            sha = await client.script_load(MINIMAL_SCRIPT)
            keys = list(MINIMAL_KEYS)
            result = Result(f"raw-async-{concurrency}", "reference",
                            note=f"redis.asyncio EVALSHA minimal script, {concurrency} tasks, "
                                 f"{loop_name()}")
            return await time_async(result, lambda: client.evalsha(sha, 4, *keys),
                                    concurrency, seconds)
        finally:
            await client.aclose()

    return run_loop(main())


def bench_limits(url: str, seconds: float) -> Result:
    from limits import RateLimitItemPerDay
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter

    storage = RedisStorage(url)
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerDay(10**9)
    scopes = [f"{ORG}", f"{ORG}/team:eng", f"{ORG}/team:eng/user:alice", f"{ORG}/agent:gpt-4o"]

    def decide() -> bool:
        ok = True
        for scope in scopes:
            ok = limiter.hit(item, scope) and ok
        return ok

    if not decide():
        raise RuntimeError("the limits library refused a hit")
    import limits

    return time_sync(Result("limits", "reference",
                            note=f"limits {limits.__version__} FixedWindow, 4 hits (not atomic)"),
                     decide, seconds)


def depth_scan(port: int, client: redis.Redis, seconds: float,
               depths: tuple[int, ...] = (1, 2, 3, 4, 5), many: bool = True,
               rounds: int = 2) -> list[Result]:
    """Check script under ``redis-benchmark -P 16`` for 1..5 budgets, and the 4-level subject
    under a policy with 1,000 other orgs. ``rounds`` passes over every point, interleaved, the
    best run of each point kept (noise hits the points alike instead of one of them)."""
    labels = {1: "org", 2: "+org agent", 3: "+team", 4: "+user", 5: "+user agent"}
    points: list[tuple[str, int, int, str]] = [
        (f"depth-{d}", d, 0, f"check script, {d} budget(s) ({labels[d]}), -c 50 -P 16")
        for d in depths]
    if many:
        points.append(("many-policies", 4, 1000,
                       "check script, depth 4, policy with 1,000 other orgs/teams, -c 50 -P 16"))
    commands = {name: check_command(client, depth, extra) for name, depth, extra, _ in points}
    best: dict[str, Result] = {}
    for _ in range(rounds):
        for name, _depth, _extra, note in points:
            r = redis_benchmark(name, port, commands[name], seconds / rounds, pipeline=16,
                                group="scan", note=note, repeats=1)
            if name not in best or r.rate > best[name].rate:
                best[name] = r
    for r in best.values():
        r.extra["best_of"] = rounds
    return [best[name] for name, *_ in points]


def server_usec(client: redis.Redis) -> tuple[int, int]:
    """(calls, usec) summed over every command since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = usec = 0
    for name, value in stats.items():
        if name.startswith("cmdstat_") and isinstance(value, dict):
            calls += int(value.get("calls", 0))
            usec += int(value.get("usec", 0))
    return calls, usec
