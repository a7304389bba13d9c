"""A scriptable local webhook receiver for tests (127.0.0.1, a free port, its own thread).

``mode`` is ``"ok"`` (answer 200 to correctly signed requests), ``"fail500"`` (answer 500) or
``"down"`` (the listening socket is closed, connections are refused); setting ``"ok"`` or
``"fail500"`` again brings the server back on the same port. Every request is recorded with
its headers, body and whether its signature verified; :meth:`received_ids` is what a deduping
receiver would have accepted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from budgetlimiter.durable.alerts import InvalidSignature, verify


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    valid: bool
    status: int
    path: str

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


class WebhookReceiver:
    """Local HTTP receiver verifying Standard Webhooks signatures with ``secret``."""

    def __init__(self, secret: str, *, mode: str = "ok", tolerance_s: int = 300) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._mode = "down"
        self.port = 0
        self.mode = mode

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/budget"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in ("ok", "fail500", "down"):
            raise ValueError(f"unknown mode {mode!r}")
        self._mode = mode
        if mode == "down":
            self.stop()
        else:
            self.start()

    def start(self) -> WebhookReceiver:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is not None:
            return self
        if self._mode == "down":
            self._mode = "ok"
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: further connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._mode = "down"

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what arrived

    def received_ids(self) -> set[str]:
        """Ids accepted with a valid signature (what a deduping receiver processed)."""
        with self._lock:
            return {r.id for r in self.requests if r.valid and r.status == 200}

    def accepted(self) -> list[Received]:
        """Every accepted request, duplicates included, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.valid and r.status == 200]

    def raw_count(self) -> int:
        """Every request received, whatever the answer."""
        with self._lock:
            return len(self.requests)

    def _record(self, rec: Received) -> None:
        with self._lock:
            self.requests.append(rec)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify(receiver.secret, hdrs, body, tolerance_s=receiver.tolerance_s)
                    valid = True
                except InvalidSignature:
                    valid = False
                status = 500 if receiver.mode == "fail500" else (200 if valid else 401)
                receiver._record(Received(hdrs, body, valid, status, self.path))
                reply = b"ok" if status == 200 else b"no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
