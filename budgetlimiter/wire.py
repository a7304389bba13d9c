"""One Redis connection driven directly by the asyncio client's coalescer.

redis-py sets the connection up (TLS, ``AUTH``/ACL user, ``SELECT``, ``HELLO``, Sentinel's
master lookup: everything in the URL), then this module takes its transport over: commands
are written as RESP bytes (packed by hiredis), replies are read by a hiredis ``Reader`` from
``data_received`` and handed to the callers' futures in order. Under a busy sidecar, redis-py's
pipeline machinery (a task per batch, a ``Pipeline`` object, an awaited read with a timeout
context per reply) cost more CPU than the Redis work it carried; here a reply costs a dict-free
``gets()`` and a ``set_result``.

Failure semantics match redis-py's, so the engine's breaker, outage policy and NOSCRIPT
reload see the same exceptions: a lost connection fails every call on it with
``redis.exceptions.ConnectionError``; a reply later than the socket timeout fails every call
on the connection with ``redis.exceptions.TimeoutError`` and closes it (the reply order
cannot be trusted after that); an error reply (``NOSCRIPT``, a script error) fails only its
own call, with redis-py's exception class for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py's mapping of error replies to exception classes (NOSCRIPT -> NoScriptError)
    from redis._parsers.base import BaseParser

    _parse_error: Any = BaseParser.parse_error
except ImportError:  # pragma: no cover - older redis-py: plain ResponseError
    from redis.exceptions import ResponseError as _parse_error

log = logging.getLogger("budgetlimiter")


class WireUnsupported(Exception):
    """This client's connections cannot be taken over (fakeredis, a cluster, a custom
    connection class): the coalescer keeps redis-py's pipelines."""


def can_take_over(client: Any) -> bool:
    """Whether :func:`open_wire` can work with ``client`` (a plain or Sentinel-managed
    ``redis.asyncio.Redis`` whose connections are sockets)."""
    import redis.asyncio

    if not isinstance(client, redis.asyncio.Redis) or \
            type(client).__module__.startswith("fakeredis"):
        return False
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(pool, "connection_kwargs", {}).get("protocol") in (3, "3"):
        return False  # RESP3 push messages would interleave with replies
    from redis.asyncio.connection import AbstractConnection

    cls = getattr(pool, "connection_class", None)
    return isinstance(cls, type) and issubclass(cls, AbstractConnection)


async def open_wire(client: Any) -> Wire:
    """Connect a new connection the way ``client`` would (its pool's settings) and take it
    over. Raises what redis-py raises when Redis cannot be reached."""
    pool = client.connection_pool
    conn = pool.make_connection()
    await conn.connect()
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    # bytes redis-py read past its handshake would belong to no command of ours
    leftover = getattr(getattr(conn, "_reader", None), "_buffer", b"")
    if transport is None or not hasattr(transport, "set_protocol") or leftover:
        await conn.disconnect()
        raise WireUnsupported(type(conn).__name__)
    kwargs: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": _parse_error}
    encoder = getattr(conn, "encoder", None)
    if encoder is not None and encoder.decode_responses:
        kwargs["encoding"] = encoder.encoding
        kwargs["errors"] = encoder.encoding_errors
    timeout = pool.connection_kwargs.get("socket_timeout")
    wire = Wire(transport, hiredis.Reader(**kwargs), timeout)
    transport.set_protocol(wire)
    # the transport is the wire's now: neither redis-py's connection nor asyncio's stream
    # writer may close it when collected (the writer's __del__ would), so the wire keeps the
    # writer and the connection forgets it
    wire.stream_writer = writer
    conn._writer = conn._reader = None
    return wire


class Wire(asyncio.Protocol):
    """A connection whose replies resolve futures in the order their commands were written."""

    def __init__(self, transport: Any, reader: Any, timeout: float | None) -> None:
        self.transport = transport
        self.reader = reader
        self.timeout = timeout
        #: futures of the commands written and not answered yet, oldest first
        self.pending: deque[asyncio.Future[Any]] = deque()
        #: (number of commands, monotonic time written) per write, oldest first: the
        #: deadline check looks at the oldest only
        self._writes: deque[tuple[int, float]] = deque()
        self._answered = 0  #: replies read of the oldest write
        self._timer: asyncio.TimerHandle | None = None
        self.closed: BaseException | None = None
        #: called with the number of commands of a write once all its replies arrived
        self.on_batch_done: Any = None
        #: asyncio's writer of the stream redis-py opened (kept: collecting it closes the
        #: transport)
        self.stream_writer: Any = None

    # writing -------------------------------------------------------------------------
    def write(self, packed: list[bytes], futures: list[asyncio.Future[Any]]) -> None:
        """Write one batch of packed commands; each future gets its own reply."""
        if self.closed is not None:
            raise RedisConnectionError(f"Connection closed: {self.closed}")
        self.pending.extend(futures)
        self._writes.append((len(futures), time.monotonic()))
        self.transport.write(b"".join(packed))
        if self._timer is None and self.timeout:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._deadline)

    @property
    def busy(self) -> int:
        """Writes whose replies have not all arrived."""
        return len(self._writes)

    # reading -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed is not None:
            return
        reader = self.reader
        try:
            reader.feed(data)
            pending = self.pending
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise InvalidResponse("a reply no command asked for")
                fut = pending.popleft()
                self._one_answered()
                if isinstance(reply, ReadOnlyError):
                    # a failover made this server a replica (as redis-py's Sentinel
                    # connections do): an outage for the caller, and a new connection (the
                    # pool asks the sentinels for the master again) for the next call
                    pending.appendleft(fut)
                    self._fail(RedisConnectionError("the master became a replica (READONLY)"))
                    return
                if fut.done():  # its caller went away; the order still holds
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except Exception as exc:  # a protocol error: nothing after it can be trusted
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))

    def _one_answered(self) -> None:
        self._answered += 1
        count = self._writes[0][0]
        if self._answered == count:
            self._writes.popleft()
            self._answered = 0
            if self.on_batch_done is not None:
                self.on_batch_done(count)

    def _deadline(self) -> None:
        self._timer = None
        if not self._writes or self.closed is not None:
            return
        waited = time.monotonic() - self._writes[0][1]
        assert self.timeout is not None
        if waited >= self.timeout:
            self._fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._timer = asyncio.get_running_loop().call_later(self.timeout - waited,
                                                                self._deadline)

    # ending --------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError("Connection closed by server."))

    def eof_received(self) -> bool | None:
        self._fail(RedisConnectionError("Connection closed by server."))
        return None

    def _fail(self, exc: BaseException) -> None:
        """Fail every call on this connection and close it (used once)."""
        if self.closed is None:
            self.closed = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, deque()
        writes, self._writes = self._writes, deque()
        self._answered = 0
        for fut in pending:
            if not fut.done():
                fut.set_exception(exc)
        if self.on_batch_done is not None:
            for count, _ in writes:
                self.on_batch_done(count)
        self.transport.close()

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionError``."""
        self._fail(RedisConnectionError("Connection closed by the client."))
