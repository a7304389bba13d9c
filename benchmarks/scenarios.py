"""The library's own scenarios: sync, async-N, batch and the HTTP sidecar."""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .common import (
    Result,
    estimate,
    loop_name,
    make_policy,
    policy_dict,
    run_loop,
    subject,
    time_async,
    time_sync,
)

BATCH = 100


#: the lease configuration of the ``-lease`` scenarios
LEASE_CALLS = 256
LEASE_SECONDS = 1.0


def bench_sync(url: str, seconds: float) -> Result:
    from budgetlimiter import BudgetLimiter

    limiter = BudgetLimiter(make_policy(), url)
    subj, est = subject(), estimate()
    decision = limiter.check(subj, est)
    if not decision.allowed or len(decision.limits) != 4:
        raise RuntimeError(f"unexpected decision: {decision}")
    try:
        return time_sync(Result("sync", "library", note="BudgetLimiter.check loop"),
                         lambda: limiter.check(subj, est).allowed, seconds)
    finally:
        limiter.close()


def bench_sync_lease(url: str, seconds: float) -> Result:
    """check + commit with leases on: most decisions never leave the process."""
    from budgetlimiter import BudgetLimiter, LeaseConfig

    limiter = BudgetLimiter(make_policy(), url,
                            leases=LeaseConfig(calls=LEASE_CALLS, seconds=LEASE_SECONDS))
    subj, est = subject(), estimate()

    def decide() -> bool:
        decision = limiter.check(subj, est)
        if decision.reservation is not None:
            limiter.commit(decision.reservation, est)
        return decision.allowed

    try:
        result = time_sync(Result("sync-lease", "library",
                                  note=f"check+commit, leases of {LEASE_CALLS} calls / "
                                       f"{LEASE_SECONDS:g} s"), decide, seconds)
        assert limiter.leases is not None
        result.extra["local_share"] = round(limiter.leases.local_admits / max(1, result.count),
                                            3)
        return result
    finally:
        limiter.close()


def bench_async(url: str, seconds: float, concurrency: int,
                timeout: float | None = None, lease: bool = False) -> Result:
    """``timeout``: the client's socket timeout (None: the library default). ``lease``: leases
    on, and every admitted check is committed (locally, from the lease)."""
    from budgetlimiter import AsyncBudgetLimiter, LeaseConfig

    async def main() -> Result:
        opts: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if lease:
            opts["leases"] = LeaseConfig(calls=LEASE_CALLS, seconds=LEASE_SECONDS)
        limiter = AsyncBudgetLimiter(make_policy(), url, **opts)

        async def check() -> bool:
            decision = await limiter.check(subj, est)
            if lease and decision.reservation is not None:
                await limiter.commit(decision.reservation, est)
            return decision.allowed

        subj, est = subject(), estimate()
        try:
            decision = await limiter.check(subj, est)
            if not decision.allowed:
                raise RuntimeError(f"unexpected decision: {decision}")
            note = f"AsyncBudgetLimiter.check, {concurrency} tasks, {loop_name()}"
            if timeout is not None:
                note += f", timeout={timeout:g}s"
            if lease:
                note = (f"check+commit, {concurrency} tasks, leases of {LEASE_CALLS} calls / "
                        f"{LEASE_SECONDS:g} s, {loop_name()}")
            name = f"async-{concurrency}" + ("-lease" if lease else "")
            result = Result(name, "library", note=note)
            co = limiter.coalescer
            before = (co.pipelines, co.calls) if co is not None else (0, 0)
            await time_async(result, check, concurrency, seconds)
            if co is not None:
                pipes = co.pipelines - before[0]
                result.extra["pipelines"] = pipes
                result.extra["calls_per_pipeline"] = round((co.calls - before[1]) / pipes, 1) \
                    if pipes else 0.0
            return result
        finally:
            await limiter.aclose()

    return run_loop(main())


def bench_batch(url: str, seconds: float) -> Result:
    from budgetlimiter import BudgetLimiter

    limiter = BudgetLimiter(make_policy(), url)
    est = estimate()
    items = [(subject(f"user-{i:03d}"), est) for i in range(BATCH)]
    try:
        result = Result("batch", "library",
                        note=f"check_batch of {BATCH}; latency is per batch call")

        def batch() -> bool:
            return all(d.allowed for d in limiter.check_batch(items))

        return time_sync(result, batch, seconds, per_call=BATCH)
    finally:
        limiter.close()


def bench_sidecar(url: str, seconds: float, concurrency: int = 64) -> Result:
    result = Result(f"sidecar-{concurrency}", "library",
                    note=f"HTTP POST /v1/check, {concurrency} concurrent (benchmarks/sidecar.py)")
    if importlib.util.find_spec("benchmarks.sidecar") is None:
        result.skipped = "benchmarks/sidecar.py is missing"
        return result
    with tempfile.TemporaryDirectory(prefix="bl-bench-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy_dict(), sort_keys=False), encoding="utf-8")
        try:
            module = importlib.import_module("benchmarks.sidecar")
            started = time.perf_counter()
            out: dict[str, Any] = module.run(url, str(path), seconds, concurrency)
            elapsed = time.perf_counter() - started
        except Exception as exc:  # someone else's module: report, never crash the suite
            result.skipped = f"sidecar failed: {type(exc).__name__}: {exc}"[:300]
            return result
    rate = out.get("requests_per_s", out.get("rps"))
    if not rate:
        result.skipped = f"sidecar returned no rate: {out}"[:300]
        return result
    result.rate = float(rate)
    result.count = int(out.get("requests", 0))
    result.seconds = float(out.get("seconds", elapsed))
    for ours, us_key, ms_key in (("p50_us", "p50_us", "p50_ms"), ("p99_us", "p99_us", "p99_ms"),
                                 ("p999_us", "p999_us", "p999_ms")):
        if out.get(us_key) is not None:
            setattr(result, ours, float(out[us_key]))
        elif out.get(ms_key) is not None:
            setattr(result, ours, float(out[ms_key]) * 1000)
    result.extra = {k: v for k, v in out.items() if isinstance(v, (int, float, str, dict))}
    errors = out.get("errors") or 0
    outcomes = out.get("outcomes") or {}
    if errors or any(k != "allowed" for k in outcomes):
        result.note += f"; errors={errors} outcomes={outcomes}"
    return result
