"""``python -m benchmarks``: every scenario and reference in one run, on a fresh redis-server.

Prints decisions/s and p50 / p99 / p99.9 latency (µs) per scenario, the goals (ratios against
the references measured in this same run) and the depth scan; writes the JSON to
``benchmarks/results/latest.json`` and, when matplotlib is installed, a PNG chart next to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import envoy, http_wrk, realistic, report, scenarios
from . import references as refs
from .common import Result, set_mark_hook
from .server import RedisServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ASYNC_1000_TIMEOUT = 2.0


@dataclass
class Ctx:
    server: RedisServer
    seconds: float
    quick: bool

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Entry:
    name: str
    quick: bool  #: part of --quick
    run: Callable[[Ctx], list[Result]]
    #: result names it produces (for the JSON's "expected" list)
    produces: Callable[[bool], list[str]]


def _one(name: str) -> Callable[[bool], list[str]]:
    return lambda quick: [name]


def _rb(kind: str) -> Entry:
    def run(ctx: Ctx) -> list[Result]:
        client = ctx.server.client()
        if kind == "check":
            command = refs.check_command(client)
            what = "project check script (4 budgets)"
        else:
            command = refs.minimal_command(client)
            what = "minimal 4-key GET+INCRBY script"
        client.close()
        return [refs.redis_benchmark(f"rb-{kind}-c50", ctx.server.port, command, ctx.seconds,
                                     note=f"redis-benchmark -c 50, {what}"),
                refs.redis_benchmark(f"rb-{kind}-P16", ctx.server.port, command, ctx.seconds,
                                     pipeline=16,
                                     note=f"redis-benchmark -c 50 -P 16, {what}")]

    return Entry(f"rb-{kind}", True, run, lambda quick: [f"rb-{kind}-c50", f"rb-{kind}-P16"])


def _scan_depths(quick: bool) -> tuple[int, ...]:
    return (1, 4) if quick else (1, 2, 3, 4, 5)


def _scan(ctx: Ctx) -> list[Result]:
    client = ctx.server.client()
    try:
        return refs.depth_scan(ctx.server.port, client, ctx.seconds, _scan_depths(ctx.quick),
                               rounds=1 if ctx.quick else 2)
    finally:
        client.close()


ENTRIES: list[Entry] = [
    Entry("sync", True, lambda c: [scenarios.bench_sync(c.url, c.seconds)], _one("sync")),
    Entry("async-1", True, lambda c: [scenarios.bench_async(c.url, c.seconds, 1)],
          _one("async-1")),
    Entry("async-64", True, lambda c: [scenarios.bench_async(c.url, c.seconds, 64)],
          _one("async-64")),
    # 1000 tasks keep the event loop busy longer than the default 50 ms socket timeout: the
    # reads time out although Redis answered, and the circuit opens (see the report)
    Entry("async-1000", False,
          lambda c: [scenarios.bench_async(c.url, c.seconds, 1000, timeout=ASYNC_1000_TIMEOUT)],
          _one("async-1000")),
    Entry("sync-lease", True, lambda c: [scenarios.bench_sync_lease(c.url, c.seconds)],
          _one("sync-lease")),
    Entry("async-64-lease", True,
          lambda c: [scenarios.bench_async(c.url, c.seconds, 64, lease=True)],
          _one("async-64-lease")),
    Entry("batch", True, lambda c: [scenarios.bench_batch(c.url, c.seconds)], _one("batch")),
    Entry("sidecar", False, lambda c: [scenarios.bench_sidecar(c.url, c.seconds, 64)],
          _one("sidecar-64")),
    # Envoy's rate limit service: ShouldRateLimit from a grpc.aio client with 64 tasks on one
    # channel, against a bare grpc.aio servicer answering OK and against budgetlimiter's
    # (request-time check of 4 budgets, reserve under a fresh request id), with serve's
    # pipeline window and without; each server in its own process, the three side by side,
    # loaded in turns of 0.5 s (benchmarks/envoy.py)
    Entry("envoy", False, lambda c: envoy.run(c.url, c.seconds, 64),
          lambda quick: ["envoy-bare-64", "envoy-64", "envoy-64-window0"]),
    # the sidecar under wrk (64 connections, Lua POST bodies): the real `budgetlimiter serve`
    # against a bare Starlette endpoint on the same uvicorn settings, in the same run; check
    # (full and Prefer: return=minimal), check:batch, commit, release, and serve --leases
    # (benchmarks/http_wrk.py; needs the Debian package wrk)
    Entry("http", False, lambda c: http_wrk.run(c.url, c.seconds),
          lambda quick: list(http_wrk.NAMES)),
    _rb("check"),
    _rb("minimal"),
    Entry("raw-sync", True, lambda c: [refs.bench_raw_sync(c.url, c.seconds)], _one("raw-sync")),
    Entry("raw-async-64", True, lambda c: [refs.bench_raw_async(c.url, c.seconds, 64)],
          _one("raw-async-64")),
    Entry("limits", True, lambda c: [refs.bench_limits(c.url, c.seconds)], _one("limits")),
    Entry("limits-async-64", True,
          lambda c: [realistic.bench_limits_async(c.url, c.seconds, 64)],
          _one("limits-async-64")),
    Entry("async-64-mixed", True, lambda c: [realistic.bench_async_mixed(c.url, c.seconds, 64)],
          _one("async-64-mixed")),
    Entry("scan", True, _scan,
          lambda quick: [f"depth-{d}" for d in _scan_depths(quick)] + ["many-policies"]),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="budgetlimiter benchmarks against references measured in the same run.")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per scenario (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="1 s per scenario and fewer scenarios (smoke test)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json",
                        help="where to write the results (default benchmarks/results/latest.json)")
    parser.add_argument("--only", default="",
                        help="comma-separated entries: " + ",".join(e.name for e in ENTRIES))
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


def select(args: argparse.Namespace) -> list[Entry]:
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {e.name for e in ENTRIES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return [e for e in ENTRIES if e.name in wanted]
    return [e for e in ENTRIES if e.quick or not args.quick]


def run_entry(entry: Entry, ctx: Ctx) -> list[Result]:
    client = ctx.server.client()
    client.flushall()  # every scenario starts from empty counters (scripts stay loaded)

    def reset_stats() -> None:
        client.config_resetstat()

    set_mark_hook(reset_stats)
    reset_stats()
    try:
        results = entry.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        return [Result(name, "error", skipped=f"failed: {type(exc).__name__}: {exc}"[:300])
                for name in entry.produces(ctx.quick)]
    finally:
        set_mark_hook(None)
    if len(results) == 1 and not results[0].skipped and results[0].count:
        r = results[0]
        if "server_us_per_decision" not in r.extra:
            _, usec = refs.server_usec(client)
            r.extra["server_us_per_decision"] = round(usec / r.count, 2)
    client.close()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entries = select(args)
    # outage warnings would flood the output; non-admitted decisions are counted instead
    logging.getLogger("budgetlimiter").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    results: list[Result] = []
    with RedisServer() as server:
        ctx = Ctx(server, args.seconds, args.quick)
        print(f"redis-server {server.version()} on port {server.port}; "
              f"python {platform.python_version()}; {os.cpu_count()} cpu(s); "
              f"{args.seconds:g} s per scenario", file=sys.stderr)
        for entry in entries:
            t0 = time.perf_counter()
            out = run_entry(entry, ctx)
            results.extend(out)
            shown = ", ".join(f"{r.name} {r.rate:,.0f}/s" if not r.skipped
                              else f"{r.name} skipped" for r in out)
            print(f"  {entry.name:<13} {time.perf_counter() - t0:5.1f} s  {shown}",
                  file=sys.stderr)
        version = server.version()
    by_name = {r.name: r for r in results}
    goal_list = report.goals(by_name)
    scan = report.scan_summary(by_name)
    print()
    print(report.table(results))
    print()
    print(report.goals_text(goal_list))
    warn = report.warnings_text(results)
    if warn:
        print()
        print(warn)
    text = report.scan_text(scan)
    if text:
        print()
        print(text)
    expected = [n for e in entries for n in e.produces(args.quick)]
    payload: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds_per_scenario": args.seconds,
        "quick": args.quick,
        "total_seconds": round(time.perf_counter() - started, 1),
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform(), "redis": version},
        "expected": expected,
        "scenarios": {r.name: r.as_dict() for r in results},
        "goals": [g.as_dict() for g in goal_list],
        "depth_scan": scan,
    }
    report.write_json(args.json, payload)
    png = report.chart(args.json.with_suffix(".png"), by_name)
    print(f"\nwrote {args.json}" + (f" and {png}" if png else "") +
          f" in {payload['total_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
