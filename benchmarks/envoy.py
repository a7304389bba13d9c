"""Envoy rate limit service benchmark: ``ShouldRateLimit`` at fixed concurrency over gRPC.

Three servers, one load generator, same run: ``envoy-bare-64`` is a bare grpc.aio servicer
that answers OK without doing anything (the ceiling grpc.aio itself sets on this machine);
``envoy-64`` is budgetlimiter's service (``budgetlimiter.envoy.serve_grpc`` on an
AsyncBudgetLimiter with ``serve``'s pipeline window): each call is a request-time check of the
4-budget benchmark subject (org, org agent, team, user) that reserves the estimate under a
fresh request id; ``envoy-64-window0`` is the same service with the window off. Each server
runs in its own process (uvloop when installed) so that the load generator does not share its
interpreter; the three run side by side and the load moves between them in turns of
``SLICE_S`` seconds, so that a shared machine's drifting speed meets each of them alike. The
load is a grpc.aio client in this process with ``concurrency`` tasks on one channel, or with
``--open RATES`` calls started on a fixed schedule (latency below saturation). Runnable on its
own::

    python -m benchmarks.envoy redis://127.0.0.1:6379/0 --seconds 3 [--window MS] [--open 1000]

The Python client costs about as much CPU per call as the bare servicer, so on two cores it
shares the bottleneck of the bare row. ``--h2load`` adds two rows driven by h2load (C, from
Debian's nghttp2-client) with one pre-encoded gRPC request on one HTTP/2 connection with 64
streams: the bare servicer and budgetlimiter's service. h2load sends the same body every time,
so that request carries no request id (the no-request-id path: check, then release at once).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .common import (
    AGENT,
    ORG,
    TEAM,
    USER,
    WARMUP_S,
    Result,
    finish,
    loop_name,
    policy_dict,
    run_loop,
)

_SERVE = """
import asyncio, json, signal, sys
mode, url, policy_path, port = sys.argv[1:5]

async def main():
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
    if mode == "bare":
        class Bare:
            async def ShouldRateLimit(self, request, context):
                return rls_pb2.RateLimitResponse(
                    overall_code=rls_pb2.RateLimitResponse.OK,
                    statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(
                        code=rls_pb2.RateLimitResponse.OK)])
        server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Bare(), server)
        server.add_insecure_port("127.0.0.1:" + port)
        await server.start()
    else:
        from budgetlimiter import AsyncBudgetLimiter, load_policy
        from budgetlimiter.cli.serve import SERVE_PIPELINE_WINDOW
        from budgetlimiter.envoy import serve_grpc
        # as `serve` runs it (its pipeline window), or "window0": every call written alone
        window = float(sys.argv[5]) if len(sys.argv) > 5 else SERVE_PIPELINE_WINDOW
        limiter = AsyncBudgetLimiter(load_policy(policy_path), url,
                                     pipeline_window=0.0 if mode == "window0" else window)
        service = await serve_grpc(limiter, port=int(port))  # kept: a collected server stops
    import gc  # both servers, as `serve` does once started (its gc_freeze)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    if mode != "bare":  # how many calls each write to Redis carried
        co = limiter.coalescer
        print(json.dumps({"calls": co.calls, "writes": co.pipelines, "windows": co.windows}),
              flush=True)

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(mode: str, url: str, policy_path: str,
           window: float | None = None) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, mode, url, policy_path, str(port),
                             *([] if window is None else [str(window)])],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server is up (or died)
    if line.strip() != "ready":
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"the {mode} gRPC server did not start (exit {proc.returncode})")
    return proc, port


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: the three servers run side by side and the load moves between them in slices of this many
#: seconds: a shared machine's speed drifts over seconds (seen here: the bare row alone varied
#: 4,500-6,300 calls/s from one run to the next), and each server then meets every phase
SLICE_S = 0.5


class _Target:
    """One running server and what the load measured on it so far."""

    def __init__(self, result: Result, proc: subprocess.Popen[str], port: int) -> None:
        self.result, self.proc, self.port = result, proc, port
        self.latencies: list[int] = []
        self.elapsed = 0.0
        self.calls = 0  #: warm-up included (the CPU counts cover it too)
        self.server_cpu = 0.0
        self.client_cpu = 0.0
        self.errors = 0
        self.refused = 0


async def _load(targets: list[_Target], seconds: float, concurrency: int,
                rate: float | None = None) -> None:
    """``concurrency`` tasks on one channel per server (or, with ``rate``, calls started at
    that many per second whatever the answers do), in turns of SLICE_S seconds each,
    ``seconds`` per server in all (after a warm-up of each)."""
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    fixed = [entry(key="org", value=ORG), entry(key="team", value=TEAM),
             entry(key="user", value=USER), entry(key="model", value=AGENT)]
    # request ids unique across runs too: Redis keeps reservations of earlier runs, and a
    # request id checked twice is refused (as the service documents)
    tag = os.urandom(4).hex()
    ids = itertools.count()
    perf = time.perf_counter_ns
    ok_code = rls_pb2.RateLimitResponse.OK
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{t.port}") for t in targets]
    try:
        async def one(t: _Target, stub: Any, measured: bool, t0: int) -> None:
            rid = entry(key="request_id", value=f"{tag}-{next(ids)}")
            request = rls_pb2.RateLimitRequest(domain="budgetlimiter", descriptors=[
                ratelimit_pb2.RateLimitDescriptor(entries=[*fixed, rid])])
            t.calls += 1
            try:
                reply = await stub.ShouldRateLimit(request, timeout=10)
            except grpc.aio.AioRpcError:
                t.errors += 1
                return
            if measured:
                t.latencies.append(perf() - t0)
                t.refused += reply.overall_code != ok_code

        async def closed(t: _Target, stub: Any, until: int, measured: bool) -> None:
            async def worker() -> None:
                while (t0 := perf()) < until:
                    await one(t, stub, measured, t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        async def open_(t: _Target, stub: Any, until: int, measured: bool) -> None:
            # calls start on a fixed schedule whatever the answers do; latency counts from the
            # scheduled start (a late start is the server's delay too)
            assert rate is not None
            step, due, calls = int(1e9 / rate), perf(), []
            while due < until:
                ahead = due - perf()
                if ahead > 0:
                    await asyncio.sleep(ahead / 1e9)
                calls.append(asyncio.ensure_future(one(t, stub, measured, due)))
                due += step
            await asyncio.gather(*calls)

        async def turn(t: _Target, stub: Any, span: float, measured: bool) -> None:
            until = perf() + int(span * 1e9)
            cpu, client, start = _cpu_seconds(t.proc.pid), time.process_time(), perf()
            await (closed if rate is None else open_)(t, stub, until, measured)
            after = _cpu_seconds(t.proc.pid)
            if measured:
                t.elapsed += (perf() - start) / 1e9
            if cpu is not None and after is not None:
                t.server_cpu += after - cpu
            t.client_cpu += time.process_time() - client

        stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
        for t, stub in zip(targets, stubs, strict=True):
            await turn(t, stub, WARMUP_S, measured=False)
        for _ in range(max(1, math.ceil(seconds / SLICE_S))):
            for t, stub in zip(targets, stubs, strict=True):
                await turn(t, stub, SLICE_S, measured=True)
    finally:
        for c in channels:
            await c.close()
    for t in targets:
        r = t.result
        finish(r, t.latencies, len(t.latencies) - t.refused, t.elapsed)
        r.extra["not_admitted"] = t.refused
        r.extra["errors"] = t.errors
        if t.calls:
            r.extra["server_cpu_us_per_call"] = round(t.server_cpu / t.calls * 1e6, 1)
            # the load generator's own cost: near the server's, it shares the bottleneck
            r.extra["client_cpu_us_per_call"] = round(t.client_cpu / t.calls * 1e6, 1)


def run(url: str, seconds: float, concurrency: int = 64,
        rate: float | None = None, window: float | None = None) -> list[Result]:
    """``envoy-bare-<n>``, ``envoy-<n>`` and ``envoy-<n>-window0``: the same load against the
    bare servicer, the service as ``serve`` runs it (its 4 ms pipeline window), and the
    service with the window off (every Redis call written on its own); the three servers run
    side by side and take the load in turns (SLICE_S). With ``rate``: calls started at that
    many per second instead (``envoy-open-<rate>...``), for the latency below saturation;
    ``window``: the service row's pipeline window in seconds instead of ``serve``'s."""
    load = f"{concurrency}" if rate is None else f"open-{rate:g}"
    names = (f"envoy-bare-{load}", f"envoy-{load}", f"envoy-{load}-window0")
    if importlib.util.find_spec("grpc") is None or importlib.util.find_spec("envoy") is None:
        return [Result(n, "envoy", skipped="needs the envoy extra (grpcio, xds-protos)")
                for n in names]
    targets: list[_Target] = []
    with tempfile.TemporaryDirectory(prefix="bl-bench-envoy-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy_dict(), sort_keys=False), encoding="utf-8")
        try:
            for mode, name in zip(("bare", "budget", "window0"), names, strict=True):
                how = (f"{concurrency} tasks" if rate is None else
                       f"{rate:g} calls/s started on schedule")
                note = (f"ShouldRateLimit, {how} on one grpc.aio channel, server in its own "
                        f"process, {loop_name()}, servers loaded in turns of {SLICE_S} s; ")
                note += ("bare servicer answering OK" if mode == "bare" else
                         "request-time check of 4 budgets, reserve under a fresh request id")
                if mode == "window0":
                    note += ", pipeline window off"
                if mode == "budget" and window is not None:
                    note += f", pipeline window {window * 1000:g} ms"
                proc, port = _start(mode, url, str(path), window)
                targets.append(_Target(Result(name, "envoy", note=note), proc, port))
            run_loop(_load(targets, seconds, concurrency, rate))
        finally:
            for t in targets:
                _stop(t.proc, t.result)
    return [t.result for t in targets]


def _stop(proc: subprocess.Popen[str], result: Result) -> None:
    """Stop a server; the service's last line says how many calls each Redis write carried."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    for line in out.splitlines():
        if line.startswith("{"):
            stats = json.loads(line)
            if stats["writes"]:
                result.extra["calls_per_redis_write"] = round(stats["calls"] / stats["writes"],
                                                              2)
                result.extra["pipeline_windows"] = stats["windows"]


def _grpc_body() -> bytes:
    """A length-prefixed gRPC message: the benchmark subject's request, no request id."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    request = rls_pb2.RateLimitRequest(domain="budgetlimiter", descriptors=[
        ratelimit_pb2.RateLimitDescriptor(entries=[
            entry(key="org", value=ORG), entry(key="team", value=TEAM),
            entry(key="user", value=USER), entry(key="model", value=AGENT)])])
    message = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(message)) + message


def _answers_ok(port: int, body: bytes) -> bool:
    """The server answers the h2load body with gRPC OK (h2load only sees HTTP statuses)."""
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    request = rls_pb2.RateLimitRequest.FromString(body[5:])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=10)
    return bool(reply.overall_code == rls_pb2.RateLimitResponse.OK)


def run_h2load(url: str, seconds: float, concurrency: int = 64) -> list[Result]:
    """``envoy-h2load-bare-<n>`` and ``envoy-h2load-<n>``: h2load against both servers."""
    names = (f"envoy-h2load-bare-{concurrency}", f"envoy-h2load-{concurrency}")
    if shutil.which("h2load") is None:
        return [Result(n, "envoy", skipped="needs h2load (Debian: nghttp2-client)")
                for n in names]
    results = []
    with tempfile.TemporaryDirectory(prefix="bl-bench-envoy-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy_dict(), sort_keys=False), encoding="utf-8")
        body = Path(tmp) / "request.grpc"
        body.write_bytes(_grpc_body())
        for mode, name in zip(("bare", "budget"), names, strict=True):
            note = (f"ShouldRateLimit from h2load, one HTTP/2 connection, {concurrency} "
                    f"streams, server in its own process, {loop_name()}; ")
            note += ("bare servicer answering OK" if mode == "bare" else
                     "check of 4 budgets without a request id (check, release at once)")
            proc, port = _start(mode, url, str(path))
            try:
                result = Result(name, "envoy", note=note)
                if not _answers_ok(port, body.read_bytes()):
                    result.skipped = "the server did not answer OK"
                    results.append(result)
                    continue
                before = _cpu_seconds(proc.pid)
                out = subprocess.run(
                    ["h2load", "-c", "1", "-m", str(concurrency), "-D", f"{int(seconds * 1000)}ms",
                     "--warm-up-time", "300ms", "-d", str(body),
                     "-H", "content-type: application/grpc", "-H", "te: trailers",
                     f"http://127.0.0.1:{port}/{SERVICE}/ShouldRateLimit"],
                    capture_output=True, text=True, check=True).stdout
                after = _cpu_seconds(proc.pid)
                done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded",
                                 out)
                rate = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
                if done is None or rate is None:
                    raise RuntimeError(f"unexpected h2load output: {out[-500:]}")
                result.count, result.rate = int(done.group(2)), float(rate.group(2))
                result.seconds = seconds  # (h2load's "finished in" includes the warm-up)
                result.extra["errors"] = int(done.group(1)) - int(done.group(2))
                calls = result.rate * float(rate.group(1))  # warm-up included, like the CPU
                if before is not None and after is not None and calls:
                    result.extra["server_cpu_us_per_call"] = round(
                        (after - before) / calls * 1e6, 1)
                results.append(result)
            finally:
                _stop(proc, result)
    return results


SERVICE = "envoy.service.ratelimit.v3.RateLimitService"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.1f} ms"


def ratio_line(results: list[Result]) -> str:
    """``envoy-64 / envoy-bare-64 = 0.71x (goal >= 0.6x)``."""
    by = {r.name: r for r in results}
    bare = next((r for n, r in by.items() if n.startswith("envoy-bare-")), None)
    ours = next((r for n, r in by.items()
                 if not n.startswith("envoy-bare-") and not n.endswith("-window0")), None)
    window0 = next((r for n, r in by.items() if n.endswith("-window0")), None)
    if bare is None or ours is None or not bare.rate or not ours.rate:
        return "envoy ratio: not measured"
    line = (f"{ours.name} / {bare.name} = {ours.rate / bare.rate:.2f}x (goal >= 0.6x): "
            f"{ours.rate:,.0f} vs {bare.rate:,.0f} calls/s, p50 {_ms(ours.p50_us)} vs "
            f"{_ms(bare.p50_us)}, p99 {_ms(ours.p99_us)} vs {_ms(bare.p99_us)}")
    if "calls_per_redis_write" in ours.extra:
        line += f"; {ours.extra['calls_per_redis_write']} calls per Redis write"
    cpu = [r.extra.get(k) for r in (ours, bare)
           for k in ("server_cpu_us_per_call", "client_cpu_us_per_call")]
    if None not in cpu:
        line += (f"; CPU per call: server {cpu[0]} vs {cpu[2]} us, load generator "
                 f"{cpu[1]} vs {cpu[3]} us")
    if window0 is not None and window0.rate:
        line += (f"\n{window0.name} / {bare.name} = {window0.rate / bare.rate:.2f}x: "
                 f"{window0.rate:,.0f} calls/s, p50 {_ms(window0.p50_us)}, p99 "
                 f"{_ms(window0.p99_us)}, server CPU "
                 f"{window0.extra.get('server_cpu_us_per_call')} us per call, "
                 f"{window0.extra.get('calls_per_redis_write')} calls per Redis write")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.envoy")
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--h2load", action="store_true",
                        help="also drive both servers with h2load (no request id)")
    parser.add_argument("--window", type=float, default=None, metavar="MS",
                        help="the service's pipeline window (default: serve's)")
    parser.add_argument("--open", default="", metavar="RATE[,RATE...]",
                        help="also start calls at these rates (per second) whatever the answers "
                        "do, and compare latencies below saturation")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    window = None if args.window is None else args.window / 1000
    results = run(args.redis_url, args.seconds, args.concurrency, window=window)
    for r in results:
        print(json.dumps(r.as_dict()))
    print(ratio_line(results), f"({time.perf_counter() - started:.1f} s)")
    for rate in (float(x) for x in args.open.split(",") if x.strip()):
        rows = run(args.redis_url, args.seconds, args.concurrency, rate, window)
        for r in rows:
            print(json.dumps(r.as_dict()))
        print(f"{rate:g} calls/s: " + ", ".join(
            f"{r.name} p50 {_ms(r.p50_us)} p99 {_ms(r.p99_us)} "
            f"({r.rate:,.0f}/s, {r.extra.get('calls_per_redis_write', '-')} calls per write, "
            f"{r.extra.get('pipeline_windows', '-')} windows)"
            for r in rows))
    if args.h2load:
        fast = run_h2load(args.redis_url, args.seconds, args.concurrency)
        for r in fast:
            print(json.dumps(r.as_dict()))
        if all(r.rate for r in fast):
            print(f"{fast[1].name} / {fast[0].name} = {fast[1].rate / fast[0].rate:.2f}x "
                  f"(server CPU per call {fast[1].extra.get('server_cpu_us_per_call')} vs "
                  f"{fast[0].extra.get('server_cpu_us_per_call')} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
