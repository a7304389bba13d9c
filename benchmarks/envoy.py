"""Envoy rate limit service benchmark: ``ShouldRateLimit`` at fixed concurrency over gRPC.

Two servers, one load generator, same run: ``envoy-bare-64`` is a bare grpc.aio servicer that
answers OK without doing anything (the ceiling grpc.aio itself sets on this machine);
``envoy-64`` is budgetlimiter's service (``budgetlimiter.envoy.serve_grpc`` on an
AsyncBudgetLimiter): each call is a request-time check of the 4-budget benchmark subject
(org, org agent, team, user) that reserves the estimate under a fresh request id. Each server
runs in its own process (uvloop when installed) so that the load generator does not share its
interpreter; the load is a grpc.aio client in this process with ``concurrency`` tasks on one
channel. Runnable on its own::

    python -m benchmarks.envoy redis://127.0.0.1:6379/0 --seconds 3

The Python client costs about as much CPU per call as the bare servicer, so on two cores it
shares the bottleneck of the bare row. ``--h2load`` adds two rows driven by h2load (C, from
Debian's nghttp2-client) with one pre-encoded gRPC request on one HTTP/2 connection with 64
streams: the bare servicer and budgetlimiter's service. h2load sends the same body every time,
so that request carries no request id (the no-request-id path: check, then release at once).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
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

import yaml

from .common import AGENT, ORG, TEAM, USER, Result, loop_name, policy_dict, run_loop, time_async

_SERVE = """
import asyncio, sys
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
        from budgetlimiter.envoy import serve_grpc
        # "pipe1": one pipeline on the wire at a time, so calls that gRPC hands over one per
        # loop turn wait for it and share the next one (an option of the embedding program)
        limiter = AsyncBudgetLimiter(load_policy(policy_path), url,
                                     max_inflight=1 if mode == "pipe1" else 4)
        service = await serve_grpc(limiter, port=int(port))  # kept: a collected server stops
    import gc  # both servers, as `serve` does once started (its gc_freeze)
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    await asyncio.Event().wait()

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


def _start(mode: str, url: str, policy_path: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, mode, url, policy_path, str(port)],
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


async def _load(pid: int, port: int, seconds: float, concurrency: int, result: Result) -> Result:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    fixed = [entry(key="org", value=ORG), entry(key="team", value=TEAM),
             entry(key="user", value=USER), entry(key="model", value=AGENT)]
    ids = itertools.count()
    # request ids unique across runs too: Redis keeps reservations of earlier runs, and a
    # request id checked twice is refused (as the service documents)
    tag = os.urandom(4).hex()
    errors = 0
    cpu_before, client_before = _cpu_seconds(pid), time.process_time()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        async def call() -> bool:
            nonlocal errors
            rid = entry(key="request_id", value=f"{result.name}-{tag}-{next(ids)}")
            request = rls_pb2.RateLimitRequest(domain="budgetlimiter", descriptors=[
                ratelimit_pb2.RateLimitDescriptor(entries=[*fixed, rid])])
            try:
                reply = await stub.ShouldRateLimit(request, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
                return False
            return bool(reply.overall_code == rls_pb2.RateLimitResponse.OK)

        await time_async(result, call, concurrency, seconds)
    cpu_after, client_after = _cpu_seconds(pid), time.process_time()
    calls = next(ids)  # warm-up included
    if cpu_before is not None and cpu_after is not None and calls:
        result.extra["server_cpu_us_per_call"] = round((cpu_after - cpu_before) / calls * 1e6, 1)
    if calls:  # the load generator's own cost: near the server's, it shares the bottleneck
        result.extra["client_cpu_us_per_call"] = round((client_after - client_before) / calls
                                                       * 1e6, 1)
    result.extra["errors"] = errors
    return result


def run(url: str, seconds: float, concurrency: int = 64) -> list[Result]:
    """``envoy-bare-<n>``, ``envoy-<n>`` and ``envoy-<n>-pipe1``: the same load against the
    bare servicer, the service as ``serve`` runs it, and the service on a limiter with one
    pipeline on the wire at a time (``max_inflight=1``)."""
    names = (f"envoy-bare-{concurrency}", f"envoy-{concurrency}", f"envoy-{concurrency}-pipe1")
    if importlib.util.find_spec("grpc") is None or importlib.util.find_spec("envoy") is None:
        return [Result(n, "envoy", skipped="needs the envoy extra (grpcio, xds-protos)")
                for n in names]
    results = []
    with tempfile.TemporaryDirectory(prefix="bl-bench-envoy-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy_dict(), sort_keys=False), encoding="utf-8")
        for mode, name in zip(("bare", "budget", "pipe1"), names, strict=True):
            note = (f"ShouldRateLimit, {concurrency} tasks on one grpc.aio channel, server in "
                    f"its own process, {loop_name()}; ")
            note += ("bare servicer answering OK" if mode == "bare" else
                     "request-time check of 4 budgets, reserve under a fresh request id")
            if mode == "pipe1":
                note += ", limiter with max_inflight=1"
            proc, port = _start(mode, url, str(path))
            try:
                result = Result(name, "envoy", note=note)
                results.append(run_loop(_load(proc.pid, port, seconds, concurrency, result)))
            finally:
                proc.terminate()
                proc.wait(10)
    return results


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
                proc.terminate()
                proc.wait(10)
    return results


SERVICE = "envoy.service.ratelimit.v3.RateLimitService"


def ratio_line(results: list[Result]) -> str:
    """``envoy-64 / envoy-bare-64 = 0.71x (goal >= 0.6x)``."""
    by = {r.name: r for r in results}
    bare = next((r for n, r in by.items() if n.startswith("envoy-bare-")), None)
    ours = next((r for n, r in by.items()
                 if not n.startswith("envoy-bare-") and not n.endswith("-pipe1")), None)
    pipe1 = next((r for n, r in by.items() if n.endswith("-pipe1")), None)
    if bare is None or ours is None or not bare.rate or not ours.rate:
        return "envoy ratio: not measured"
    line = (f"{ours.name} / {bare.name} = {ours.rate / bare.rate:.2f}x (goal >= 0.6x): "
            f"{ours.rate:,.0f} vs {bare.rate:,.0f} calls/s")
    cpu = [r.extra.get(k) for r in (ours, bare)
           for k in ("server_cpu_us_per_call", "client_cpu_us_per_call")]
    if None not in cpu:
        line += (f"; CPU per call: server {cpu[0]} vs {cpu[2]} us, load generator "
                 f"{cpu[1]} vs {cpu[3]} us")
    if pipe1 is not None and pipe1.rate:
        line += (f"\n{pipe1.name} / {bare.name} = {pipe1.rate / bare.rate:.2f}x: "
                 f"{pipe1.rate:,.0f} calls/s, server CPU "
                 f"{pipe1.extra.get('server_cpu_us_per_call')} us per call")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.envoy")
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--h2load", action="store_true",
                        help="also drive both servers with h2load (no request id)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run(args.redis_url, args.seconds, args.concurrency)
    for r in results:
        print(json.dumps(r.as_dict()))
    print(ratio_line(results), f"({time.perf_counter() - started:.1f} s)")
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
