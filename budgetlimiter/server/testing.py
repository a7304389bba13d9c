"""Run the sidecar in-process on a free loopback port (tests, benchmarks, embedding)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it before it is
    used: :class:`LiveServer` holds its socket instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``uvicorn.Server`` running an ASGI app in a daemon thread.

    Not the main thread, so uvicorn installs no signal handlers and the app's SIGHUP handler
    is skipped: call ``app.state.server.reload_policy()`` instead.
    """

    def __init__(self, app: Any, *, http: str = "h11", loop: str = "asyncio") -> None:
        import uvicorn

        self.app = app
        # bound here and handed to uvicorn: no other process can take the port between
        # choosing it and serving on it
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, loop=loop, http=http, ws="none",
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="sidecar", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except SystemExit as exc:  # uvicorn exits when the lifespan startup fails
            self.exit_code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        finally:
            self._sock.close()  # also when uvicorn never got to serve on it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LiveServer:
        """Start and wait until the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the sidecar failed to start (exit code {self.exit_code}; see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Graceful stop: in-flight requests finish, then the lifespan closes the limiter."""
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
