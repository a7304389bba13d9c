"""Backends by URL, and the wheel: the package works installed, without the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.backends import parse_backend

from .policies import BASIC
from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("url,kind", [
    ("redis://127.0.0.1:6379/0", "redis"), ("rediss://h:6380", "redis"),
    ("unix:///tmp/r.sock", "redis"), ("redis+sentinel://h:26379/mymaster", "sentinel"),
    ("redis+cluster://h:7000", "cluster"), ("memory://", "memory"),
])
def test_backend_urls(url, kind):
    assert parse_backend(url).kind == kind


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported backend URL scheme 'http'"):
        parse_backend("http://localhost")


def test_cluster_and_sentinel_urls_take_several_seeds():
    from budgetlimiter.backends import _seeds

    assert _seeds("redis+cluster://u:p@h1:7000,h2:7001,[::1]:7002/0", 6379) == [
        ("h1", 7000), ("h2", 7001), ("::1", 7002)]
    assert _seeds("redis+cluster://h1,h2:7001", 6379) == [("h1", 6379), ("h2", 7001)]
    assert _seeds("redis+sentinel://s1,s2:26380/mymaster", 26379) == [
        ("s1", 26379), ("s2", 26380)]


@pytest.mark.parametrize("url,problem", [
    ("redis+cluster://h1:7000,h2:70x0",
     "the port of 'h2:70x0' in the redis+cluster:// URL is not a number from 1 to 65535"),
    ("redis+cluster://h1:7000,,h3:7000", "'' in the redis+cluster:// URL is not host:port"),
    ("redis+cluster://h1:99999", "the port of 'h1:99999' in the redis+cluster:// URL"),
    ("redis+cluster:///0", "the redis+cluster:// URL needs host:port of each seed node"),
    ("redis+sentinel://user:s3cret@s1:2637x/mymaster", "the port of 's1:2637x'"),
    ("redis+sentinel://s1:26379/mymaster?db=x", "db in the redis+sentinel:// URL must be"),
    ("redis://user:s3cret@127.0.0.1:abc/0", "the redis:// URL: Port could not be cast"),
])
def test_an_unreadable_url_is_one_clear_error(url, problem):
    """Refused before any connection: InvalidInput (a ValueError) naming what is wrong, and
    never the password."""
    from budgetlimiter.errors import InvalidInput

    with pytest.raises(InvalidInput, match=re.escape(problem)) as err:
        BudgetLimiter(parse_policy(BASIC), url, timeout=0.1)
    assert "s3cret" not in str(err.value)


@pytest.mark.redis
def test_unix_socket_backend(tmp_path):
    sock = tmp_path / "redis.sock"
    server = RedisServer("--unixsocket", str(sock), "--unixsocketperm", "700").start()
    try:
        bl = BudgetLimiter(parse_policy(BASIC), f"unix://{sock}", timeout=2)
        assert bl.check(Subject("acme", "gpt", team="eng"), Usage(input_tokens=10)).allowed
        bl.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_installed_wheel_works_without_the_checkout(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheel_dir), str(ROOT)], check=True)
    wheel = next(wheel_dir.glob("budgetlimiter-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    assert (target / "budgetlimiter" / "lua" / "check.lua").is_file()
    assert (target / "budgetlimiter" / "data" / "policy.yaml").is_file()
    code = (
        "import budgetlimiter, pathlib; "
        "assert 'site' in budgetlimiter.__file__, budgetlimiter.__file__; "
        "from budgetlimiter.demo import run_demo; r = run_demo(50); "
        "print(r.invocations, r.admitted > 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["50", "True"]


def test_async_connections_pack_with_hiredis_like_redis_py() -> None:
    """The asyncio client's connections pack with hiredis; the bytes on the wire are the ones
    redis-py's own (Python) packer writes, and bad arguments are still a DataError."""
    import redis.asyncio
    from redis.exceptions import DataError

    from budgetlimiter.backends import hiredis_packing

    client = hiredis_packing(redis.asyncio.Redis.from_url("redis://127.0.0.1:1"))
    fast = client.connection_pool.make_connection()
    plain = redis.asyncio.Connection(host="127.0.0.1", port=1)
    assert type(fast).__name__.startswith("Hiredis")
    for args in (("EVALSHA", "ab" * 20, 2, "bl:v2:{o}:k", "x y", 0, -5, 12345678901234),
                 ("CONFIG GET", "maxmemory"), ("SET", "k", bytearray(b"v")),
                 ("SET", "k", memoryview(b"\xff\x00")), ("SET", "k", "é∑")):
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", None)
