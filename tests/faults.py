"""Network faults between a client and a real redis-server, whatever the client's internals.

:class:`FaultyProxy` forwards TCP from a loopback port to the redis-server and can be switched
to fail the way a network does:

* ``down()``: every open connection is cut and new ones are closed at once (Redis
  unreachable: the client sees connection errors);
* ``lose_replies()``: requests still reach Redis, replies never come back (Redis applied the
  command, the client times out: the ambiguous failure that idempotency must absorb);
* ``up()``: forwarding again (connections cut by ``down()`` stay cut; clients reconnect).

:func:`scripts_only` fails script calls at a client's one I/O seam instead (``_execute``),
for faults a proxy cannot make (memory://, an error on one call but not the next).
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from budgetlimiter.engine.calls import ScriptCall


class FaultyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "up"
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        """Through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def target_url(self) -> str:
        """Straight to the redis-server (an observer that does not suffer the faults)."""
        return f"redis://127.0.0.1:{self.target_port}/0"

    # switches ------------------------------------------------------------------------------
    def up(self) -> None:
        self.mode = "up"

    def down(self) -> None:
        self.mode = "down"
        self._cut_all()

    def lose_replies(self) -> None:
        self.mode = "lose_replies"

    def close(self) -> None:
        self._stop.set()
        self._cut_all()
        for t in self._threads:
            t.join(5)
        self._listener.close()

    # plumbing ------------------------------------------------------------------------------
    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _cut_all(self) -> None:
        with self._lock:
            socks, self._socks = set(self._socks), set()
        for s in socks:
            _cut(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "down":
                _cut(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                _cut(conn)
                continue
            conn.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._socks.update((conn, upstream))
            self._spawn(self._pump, conn, upstream, False)
            self._spawn(self._pump, upstream, conn, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies and self.mode == "lose_replies":
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(src)
                self._socks.discard(dst)
            _cut(src)
            _cut(dst)


def _cut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def await_probe(client: object, limit: float = 10.0) -> None:
    """After an outage the client's circuit stays open a while (README "Outages"), answering
    without Redis; wait until it lets a probe through."""
    deadline = time.monotonic() + limit
    while client.breaker.state == "open":  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the circuit never half-opened"
        time.sleep(0.02)


def hand_back_all(client: Any, limit: float = 10.0) -> None:
    """``return_leases()`` until it reports nothing kept in-process: right after an outage
    the circuit's probe (the client's timer may send it) or a replay under way can hold a
    hand-back back, which the client queues and reports, never drops."""
    deadline = time.monotonic() + limit
    while (kept := client.return_leases()) != 0:
        assert time.monotonic() < deadline, f"{kept} operations never reached Redis"
        time.sleep(0.05)


def own_execute(client: Any) -> Callable[[Any], Any]:
    """The client's own, unpatched ``_execute`` (through the test adapter of the asyncio
    client too): assign it back to end a fault."""
    inner = getattr(client, "wrapped", client)
    bound: Callable[[Any], Any] = type(inner)._execute.__get__(inner)
    return bound


def scripts_only(client: Any, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An ``_execute`` that sends script calls to ``fn`` and everything else (pipelines,
    background flows, script loads) to the client's own ``_execute``."""
    own = own_execute(client)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(own):
        async def execute_async(request: Any) -> Any:
            if isinstance(request, ScriptCall):
                result = fn(request)
                return await result if inspect.isawaitable(result) else result
            return await own(request)

        return execute_async

    def execute(request: Any) -> Any:
        return fn(request) if isinstance(request, ScriptCall) else own(request)

    return execute
