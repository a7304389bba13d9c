"""The HTTP sidecar under ``wrk``: ``budgetlimiter serve`` against a bare Starlette endpoint.

Both servers run in their own process on the same uvicorn settings as ``serve`` (uvloop and
httptools when installed, one worker, no access log, no server header), and both move their
startup objects into the collector's permanent generation (``gc.freeze()``, as ``serve``
does); the load is ``wrk``
(Debian package ``wrk``) with 64 connections and a Lua script that POSTs JSON bodies, one
server after the other in the same run. The bare endpoint parses the same JSON body as the
check and answers a small JSON (``{"allowed": true, "reservation_id": ...}``): the ceiling
the HTTP stack itself sets on this machine. Scenarios (one row each, its settings in the
note):

- ``http-bare-64``: the bare Starlette endpoint;
- ``http-check-64``: ``POST /v1/check``, 4-budget policy, full answer;
- ``http-check-window4-64``: the same with ``serve --pipeline-window 4`` (the window
  ``serve --grpc-port`` turns on; off for HTTP alone);
- ``http-check-min-64``: the same with ``Prefer: return=minimal``;
- ``http-batch-64``: ``POST /v1/check:batch`` of 10 checks (rate is requests/s);
- ``http-commit-64`` / ``http-release-64``: settle reservations made before the run;
- ``http-check-lease-64``: ``serve --leases 64,1`` (``Prefer: return=minimal``);
- ``http-bare-64-end``: the bare endpoint once more, last (the ceiling drifts on a shared
  machine: ratios divide by the higher of the two bare rows).

Runnable on its own::

    python -m benchmarks.http_wrk redis://127.0.0.1:6379/0 --seconds 3 [--only check,bare]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .common import AGENT, ORG, TEAM, Result, policy_dict

CONNECTIONS = 64
THREADS = 2
USERS = 64  #: checks rotate over this many users of team eng (each with its 4 budgets)
BATCH = 10
#: reservations made before a commit/release run (ids wrap around when wrk is faster)
PREFILL = 40_000

_BARE = """
import json, sys, uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

async def check(request: Request) -> Response:
    data = json.loads(await request.body())
    doc = {"allowed": True, "reservation_id": "r-1", "retry_after": None,
           "blocked_by": None, "org": data["subject"]["org"] if "subject" in data else None}
    return Response(json.dumps(doc, separators=(",", ":")), media_type="application/json")

app = Starlette(routes=[Route("/v1/check", check, methods=["POST"]),
                        Route("/healthz", lambda r: Response("{}"), methods=["GET"])])
port, loop, http = sys.argv[1:4]
import gc  # as `serve` does once started (its gc_freeze): the same collector settings
gc.collect()
gc.freeze()
uvicorn.run(app, host="127.0.0.1", port=int(port), log_config=None, access_log=False,
            loop=loop, http=http, ws="none", server_header=False, timeout_graceful_shutdown=30)
"""

# per-thread counters give every request its own user / reservation id; done() prints one
# JSON line that run() parses (wrk's own text output is not parsed)
_LUA = """
local kind, stride, users, prefer = "%(kind)s", %(stride)d, %(users)d, "%(prefer)s"
local counter, tid = 0, 0
local threads = {}
local n_threads = 0
function setup(thread)
  thread:set("tid", n_threads)
  n_threads = n_threads + 1
  table.insert(threads, thread)
end
function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if prefer ~= "" then wrk.headers["Prefer"] = prefer end
end
local function subject(i)
  return '{"org":"%(org)s","team":"%(team)s","user":"u-' .. (i %% users) ..
         '","agent":"%(agent)s"}'
end
function request()
  counter = counter + 1
  local i = tid * stride + (counter %% stride)
  local body
  if kind == "check" then
    body = '{"subject":' .. subject(i) ..
           ',"estimate":{"input_tokens":1200,"output_tokens":800}}'
  elseif kind == "batch" then
    local items = {}
    for j = 0, %(batch)d - 1 do
      items[#items + 1] = '{"subject":' .. subject(i + j) ..
                          ',"estimate":{"input_tokens":1200,"output_tokens":800}}'
    end
    body = '{"items":[' .. table.concat(items, ",") .. ']}'
  elseif kind == "commit" then
    body = '{"org":"%(org)s","reservation_id":"r-' .. i .. '","subject":' .. subject(i) ..
           ',"actual":{"input_tokens":1000,"output_tokens":500}}'
  else
    body = '{"org":"%(org)s","reservation_id":"r-' .. i .. '"}'
  end
  return wrk.format(nil, "%(path)s", nil, body)
end
function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"p999_us":%%d,' ..
    '"non2xx":%%d,"connect_errors":%%d,"read_errors":%%d,"timeouts":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), non2xx, summary.errors.connect, summary.errors.read,
    summary.errors.timeout))
end
"""


@dataclass
class Scenario:
    name: str
    kind: str  #: check, batch, commit, release
    server: str  #: bare or sidecar
    prefer: str = ""
    leases: str = ""
    path: str = "/v1/check"
    serve_args: list[str] = field(default_factory=list)


SCENARIOS = [
    Scenario("http-bare-64", "check", "bare"),
    Scenario("http-check-64", "check", "sidecar"),
    # with the pipeline window serve gives the gRPC service (off for HTTP alone)
    Scenario("http-check-window4-64", "check", "sidecar", serve_args=["--pipeline-window", "4"]),
    Scenario("http-check-min-64", "check", "sidecar", prefer="return=minimal"),
    Scenario("http-batch-64", "batch", "sidecar", prefer="return=minimal",
             path="/v1/check:batch"),
    Scenario("http-commit-64", "commit", "sidecar", path="/v1/commit"),
    Scenario("http-release-64", "release", "sidecar", path="/v1/release"),
    Scenario("http-check-lease-64", "check", "sidecar", prefer="return=minimal",
             leases="64,1"),
    # the bare endpoint again: on a shared machine the ceiling drifts during a run; the goals
    # divide by the higher of the two bare rows (the stricter reference)
    Scenario("http-bare-64-end", "check", "bare"),
]
NAMES = [s.name for s in SCENARIOS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fast(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


def server_settings() -> str:
    """The uvicorn settings both servers run with (those of ``budgetlimiter serve``)."""
    return (f"uvicorn 1 worker, loop={_fast('uvloop', 'uvloop', 'asyncio')}, "
            f"http={_fast('httptools', 'httptools', 'h11')}, no access log")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}


def _wait_ready(port: int, proc: subprocess.Popen[bytes], path: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server did not become ready")


def start_server(sc: Scenario, url: str, policy_path: str
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """The bare app, or the real ``budgetlimiter serve`` (the CLI, as deployed)."""
    port = _free_port()
    if sc.server == "bare":
        cmd = [sys.executable, "-c", _BARE, str(port), _fast("uvloop", "uvloop", "asyncio"),
               _fast("httptools", "httptools", "h11")]
        ready = "/healthz"
    else:
        cmd = [sys.executable, "-m", "budgetlimiter.cli", "--redis", url, "--policy",
               policy_path, "serve", "--port", str(port), "--log-level", "warning",
               *(["--leases", sc.leases] if sc.leases else []), *sc.serve_args]
        ready = "/readyz"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL)
    try:
        _wait_ready(port, proc, ready)
    except Exception:
        stop_server(proc)
        raise
    return proc, port


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def _prefill(url: str, policy_path: str, count: int) -> None:
    """Reservations ``r-0`` .. for the commit/release runs (an hour's TTL)."""
    from budgetlimiter import AsyncBudgetLimiter, Subject, Usage, load_policy

    limiter = AsyncBudgetLimiter(load_policy(Path(policy_path)), url, timeout=5.0)
    est = Usage(input_tokens=1200, output_tokens=800)
    try:
        async def one(start: int) -> None:
            for i in range(start, count, 64):
                subject = Subject(ORG, AGENT, team=TEAM, user=f"u-{i % USERS}")
                await limiter.check(subject, est, reservation_id=f"r-{i}", ttl=3600)

        await asyncio.gather(*(one(s) for s in range(64)))
    finally:
        await limiter.aclose()


def _wrk(sc: Scenario, port: int, seconds: float, tmp: Path) -> dict[str, Any]:
    stride = PREFILL // THREADS if sc.kind in ("commit", "release") else 1_000_000
    script = tmp / f"{sc.name}.lua"
    script.write_text(_LUA % {"kind": sc.kind, "stride": stride, "users": USERS,
                              "prefer": sc.prefer, "org": ORG, "team": TEAM, "agent": AGENT,
                              "batch": BATCH, "path": sc.path}, encoding="utf-8")
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            out: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            return out
    raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout)[-300:]}")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_one(sc: Scenario, url: str, policy_path: str, seconds: float, tmp: Path) -> Result:
    prefer = f", Prefer: {sc.prefer}" if sc.prefer else ""
    what = ("bare Starlette endpoint (json.loads of the check body, small JSON answer)"
            if sc.server == "bare" else f"budgetlimiter serve, POST {sc.path}")
    body = {"check": "check body, 4 budgets", "batch": f"{BATCH} checks per request",
            "commit": "commit by id with subject", "release": "release by id"}[sc.kind]
    note = (f"{what}; {body}{prefer}; wrk -t{THREADS} -c{CONNECTIONS}; {server_settings()}"
            f"; leases {sc.leases or 'off'}")
    result = Result(sc.name, "http", note=note)
    if sc.kind in ("commit", "release"):
        asyncio.run(_prefill(url, policy_path, PREFILL))
    proc, port = start_server(sc, url, policy_path)
    try:
        # warm-up: connections, scripts, per-subject caches (not measured)
        if sc.kind in ("check", "batch"):
            _wrk(sc, port, 1, tmp)
        cpu = _cpu_seconds(proc.pid)
        out = _wrk(sc, port, seconds, tmp)
        cpu = _cpu_seconds(proc.pid) - cpu
    finally:
        stop_server(proc)
    elapsed = out["duration_us"] / 1e6
    # error answers (a 503 when the overloaded loop trips the Redis timeout) are not counted
    result.count = int(out["requests"]) - int(out["non2xx"])
    result.seconds = round(elapsed, 3)
    result.rate = result.count / elapsed if elapsed else 0.0
    result.p50_us, result.p99_us, result.p999_us = (float(out["p50_us"]), float(out["p99_us"]),
                                                     float(out["p999_us"]))
    errors = {k: out[k] for k in ("non2xx", "connect_errors", "read_errors", "timeouts")
              if out[k]}
    result.extra = {"errors": errors, "server_cpu_us_per_request":
                    round(cpu / result.count * 1e6, 1) if result.count else None}
    if errors:
        result.note += f"; errors {errors}"
    return result


def run(url: str, seconds: float, only: list[str] | None = None) -> list[Result]:
    """Every scenario (or those in ``only``), one after the other, same redis-server."""
    chosen = [s for s in SCENARIOS if not only or s.name in only]
    if shutil.which("wrk") is None:
        return [Result(s.name, "http", skipped="needs wrk (apt-get install wrk)") for s in chosen]
    import redis

    results = []
    with tempfile.TemporaryDirectory(prefix="bl-bench-wrk-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy_dict(), sort_keys=False), encoding="utf-8")
        for sc in chosen:
            redis.Redis.from_url(url).flushall()
            try:
                results.append(run_one(sc, url, str(path), seconds, Path(tmp)))
            except Exception as exc:
                results.append(Result(sc.name, "http", skipped=f"failed: {exc}"[:300]))
    return results


def bare_rate(results: list[Result]) -> Result | None:
    """The stricter reference: the faster of the two bare rows of the run."""
    bares = [r for r in results if r.name.startswith("http-bare-") and not r.skipped and r.rate]
    return max(bares, key=lambda r: r.rate) if bares else None


def ratio_lines(results: list[Result]) -> list[str]:
    """Each sidecar row against the bare endpoint of the same run (the faster bare row)."""
    bare = bare_rate(results)
    if bare is None:
        return ["http ratios: the bare endpoint was not measured"]
    lines = []
    for r in results:
        if r.name.startswith("http-bare-") or r.skipped or not r.rate:
            continue
        lines.append(f"{r.name} / {bare.name} = {r.rate / bare.rate:.2f}x "
                     f"({r.rate:,.0f} vs {bare.rate:,.0f} req/s; p99 {r.p99_us or 0:,.0f} vs "
                     f"{bare.p99_us or 0:,.0f} us)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_wrk")
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(NAMES))
    args = parser.parse_args(argv)
    only = [f"http-{w.strip()}-64" if not w.startswith("http-") else w.strip()
            for w in args.only.split(",") if w.strip()]
    results = run(args.redis_url, args.seconds, only)
    for r in results:
        print(f"{r.name:<20} {r.rate:>9,.0f} req/s  p50 {r.p50_us or 0:>7,.0f} us  "
              f"p99 {r.p99_us or 0:>7,.0f} us  server CPU "
              f"{r.extra.get('server_cpu_us_per_request')} us/req  {r.skipped or r.note}")
    print("\n".join(ratio_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
