"""Sidecar load benchmark: ``POST /v1/check`` over HTTP at fixed concurrency.

The sidecar runs in its own process (uvicorn with uvloop and httptools when installed, one
worker) so that the load generator does not share its interpreter; the load comes from
``httpx.AsyncClient`` tasks in this process. ``run()`` returns requests/s and latency
percentiles; it is importable by the benchmark runner and runnable on its own::

    python benchmarks/sidecar.py redis://127.0.0.1:6379/0 examples/policy.yaml --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_SERVE = """
import sys, uvicorn
from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.logs import setup_logging
setup_logging("warning")
redis_url, policy, port, loop, http = sys.argv[1:6]
app = create_app(ServerConfig(redis_url=redis_url, policy_path=policy, port=int(port)))
uvicorn.run(app, host="127.0.0.1", port=int(port), log_config=None, access_log=False,
            loop=loop, http=http, ws="none")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _subjects(policy_path: str, count: int = 64) -> list[dict[str, str]]:
    """Subjects spread over users of the policy's first org, with a priced agent."""
    from budgetlimiter.policy import load_policy

    policy = load_policy(Path(policy_path))
    orgs = policy.declared_orgs() or ("bench",)
    agents = list(policy.pricing) or ["bench-agent"]
    org = orgs[0]
    teams = list(policy.orgs[org].teams) if org in policy.orgs else []
    out = []
    for i in range(count):
        subject = {"org": org, "agent": agents[i % len(agents)], "user": f"bench-{i}"}
        if teams:
            subject["team"] = teams[i % len(teams)]
        out.append(subject)
    return out


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the sidecar did not become ready")


def _cpu_seconds(pid: int | None) -> float:
    """User+system CPU of a process (Linux ``/proc``; 0 elsewhere)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _drive(url: str, subjects: list[dict[str, str]], seconds: float,
                 concurrency: int, server_pid: int | None = None) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    status: dict[str, int] = {}
    errors = 0
    # one keep-alive connection per worker, like independent agent processes (a single
    # httpx pool shared by many tasks spends more CPU on pool bookkeeping than on requests)
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, limits=one, timeout=10)
               for _ in range(concurrency)]
    try:
        # warm-up: open the connections, load the scripts
        await asyncio.gather(*(c.get("/healthz") for c in clients))
        stop = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            nonlocal errors
            client = clients[n]
            i = n
            while time.perf_counter() < stop:
                body = {"subject": subjects[i % len(subjects)],
                        "estimate": {"input_tokens": 200, "output_tokens": 50}}
                i += concurrency
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/check", json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if resp.status_code == 200:
                    key = "allowed" if resp.json()["allowed"] else "denied"
                else:
                    key = str(resp.status_code)
                status[key] = status.get(key, 0) + 1

        started = time.perf_counter()
        cpu = time.process_time()
        server_cpu = _cpu_seconds(server_pid)
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        server_cpu = _cpu_seconds(server_pid) - server_cpu
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    return {"requests": len(latencies), "seconds": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": pct(1.0), "errors": errors, "outcomes": status,
            # where the CPU went: on 2 cores the httpx client is usually the bottleneck
            "client_cpu_ms_per_request": round(cpu * 1000 / n, 3) if n else None,
            "server_cpu_ms_per_request": round(server_cpu * 1000 / n, 3) if n else None}


def run(redis_url: str, policy_path: str, seconds: float = 5.0,
        concurrency: int = 32) -> dict[str, Any]:
    """Start a sidecar on a free port, drive ``POST /v1/check`` for ``seconds`` with
    ``concurrency`` concurrent requests, stop it; return throughput and latency (ms)."""
    port = _free_port()
    loop = "uvloop" if _available("uvloop") else "asyncio"
    http = "httptools" if _available("httptools") else "h11"
    cmd = [sys.executable, "-c", _SERVE, redis_url, policy_path, str(port), loop, http]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        result = asyncio.run(_drive(url, _subjects(policy_path), seconds, concurrency,
                                    proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    result.update({"concurrency": concurrency, "loop": loop, "http": http,
                   "backend": redis_url.split("://", 1)[0]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("redis_url")
    parser.add_argument("policy")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(run(args.redis_url, args.policy, args.seconds, args.concurrency), indent=2))


if __name__ == "__main__":
    main()
