"""Real redis-server processes for the tests, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis


def free_port() -> int:
    """A port free on 127.0.0.1 right now. Someone may take it before it is used: a server
    started on it must retry on another (as :class:`RedisServer` does), and a port meant to
    stay dead should be held with :func:`dead_port` instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port where nothing can listen while the block runs: the socket is bound
    (and held) but never listens, so connecting is refused at once and no other process's
    server can appear there mid-test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


class PortInUse(RuntimeError):
    """The server could not bind its port (another process took it first)."""


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not installed; integration tests need it "
            "(apt-get install redis-server)"
        )
    return path


class RedisServer:
    """One redis-server without persistence; can be killed and restarted on the same port.

    The port is picked free, then bound by redis-server: if another process took it in
    between, the server is started again on a new pick (``pick_port``); a fixed ``port``, and
    a restart, wait for their port instead. A server is ready when it answers *and* is this
    process (``INFO server`` gives its pid): the answer of someone else's server on a taken
    port is never mistaken for ours."""

    def __init__(self, *extra: str, port: int | None = None,
                 pick_port: Callable[[], int] = free_port) -> None:
        self._pick = pick_port if port is None else None
        self.port = port or pick_port()
        self.extra = list(extra)
        self.dir = Path(tempfile.mkdtemp(prefix="bl-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line for :attr:`port`."""
        return [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]

    def probe_client(self) -> redis.Redis:
        """A client that can ask this server ``INFO`` (subclasses: TLS, credentials)."""
        return redis.Redis(port=self.port, socket_timeout=0.5)

    def start(self) -> RedisServer:
        for _ in range(20):
            try:
                self._start_once()
                self._pick = None  # from now on the port is ours: restarts keep it
                return self
            except PortInUse:
                if self._pick is not None:
                    self.port = self._pick()  # taken between the pick and the bind
                else:
                    time.sleep(0.25)  # ours (a restart): wait until it is free again
        raise RuntimeError(f"redis-server found no free port (last {self.port})")

    def _start_once(self) -> RedisServer:
        log = self.dir / "redis.log"
        log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.kill()  # reap the process (no ResourceWarning later)
                if "Address already in use" in text:
                    raise PortInUse(self.port)
                raise RuntimeError(f"redis-server did not start on {self.port}: {text}")
            try:
                with self.probe_client() as c:
                    if int(c.info("server")["process_id"]) == self.proc.pid:
                        return self
                # another process's server answers on this port: ours is about to fail
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on {self.port}: {text}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the data is gone (no persistence)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_required() -> bool:
    """Real-Redis tests fail (never skip) unless explicitly disabled for a quick local run."""
    return os.environ.get("BUDGETLIMITER_SKIP_REDIS") != "1"
