"""Guards for streamed agent calls: reserve before the stream opens, commit when it ends.

::

    with guarded_stream(limiter, subject, estimate, open_stream) as stream:
        for chunk in stream:
            ...
    stream.result        # the SettleResult of the commit

    async with guarded_astream(alimiter, subject, estimate, open_stream) as stream:
        async for chunk in stream:
            ...

``stream`` is an iterable of chunks, or (better: the check then happens before the request is
sent) a zero-argument callable returning one; the async form also accepts an awaitable or a
callable returning an awaitable (``lambda: client.messages.create(..., stream=True)``).

Chunks are provider stream events as dicts or SDK objects (OpenAI chat chunks, Responses API
events, Anthropic events) or raw server-sent-event bytes/str (an HTTP proxy relaying the
upstream body), which are parsed on the fly and passed through unchanged. The usage settled:

- the stream ended: the usage the provider reported (OpenAI's final chunk when
  ``stream_options.include_usage``, ``response.completed``, Anthropic ``message_start`` +
  ``message_delta``); when the provider reports none, the estimate's input tokens plus the
  output text counted from the chunks with the tokenizer (default ``ceil(chars / 4)``);
- the consumer stopped early (``close()``, leaving the ``with`` block, the stream being garbage
  collected) or the stream raised: what was consumed so far, i.e. the reported input (else
  the estimate's) and the larger of the reported and the counted output;
- nothing was received (the upstream failed before the first chunk, or the stream was closed
  unread): the reservation is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import BudgetExceeded
from .estimate import Tokenizer, text_tokens
from .extract import get, usage_counts, usage_fields, usage_from_counts
from .guard import Committed, OnCommit
from .results import Decision, SettleResult
from .subject import Subject
from .usage import Usage

if TYPE_CHECKING:
    from .aio import AsyncBudgetLimiter
    from .client import BudgetLimiter

T = TypeVar("T")
SyncSource = Iterable[T] | Callable[[], Iterable[T]]
AsyncSource = (AsyncIterable[T] | Awaitable[AsyncIterable[T]]
               | Callable[[], AsyncIterable[T] | Awaitable[AsyncIterable[T]]])


class SSEDecoder:
    """Incremental server-sent-events parser: bytes in, the JSON ``data:`` payloads out."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes | str) -> list[Any]:
        """Parse one piece of the body; return the complete events' JSON payloads
        (``[DONE]`` and non-JSON payloads are skipped)."""
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
        self._buffer += text
        events: list[Any] = []
        while True:
            cut = min((i for i in (self._buffer.find("\n"), self._buffer.find("\r"))
                       if i >= 0), default=-1)
            if cut < 0:
                return events
            line = self._buffer[:cut]
            skip = 2 if self._buffer[cut:cut + 2] == "\r\n" else 1
            self._buffer = self._buffer[cut + skip:]
            if line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
            elif not line and self._data:
                payload, self._data = "\n".join(self._data), []
                if payload.strip() != "[DONE]":
                    with contextlib.suppress(ValueError):
                        events.append(json.loads(payload))


class StreamUsage:
    """Accumulates what a stream reports and what it visibly produced.

    Feed it every chunk (:meth:`feed`); :meth:`usage` gives the usage to commit.
    """

    def __init__(self, estimate: Usage, tokenizer: Tokenizer | None = None) -> None:
        self.estimate = estimate
        self.tokenizer = tokenizer
        self.raw: dict[str, Any] = {}
        self.text_parts: list[str] = []
        self.chunks = 0
        self._sse: SSEDecoder | None = None

    def feed(self, chunk: Any) -> None:
        """Account for one chunk (an event, or raw SSE bytes/str)."""
        self.chunks += 1
        if isinstance(chunk, (bytes, str)):
            self._sse = self._sse or SSEDecoder()
            for event in self._sse.feed(chunk):
                self.feed_event(event)
        else:
            self.feed_event(chunk)

    def feed_event(self, event: Any) -> None:
        """Account for one parsed stream event."""
        usage = get(event, "usage")
        if usage is None:  # Responses events carry `response`, Anthropic message_start `message`
            for holder in ("response", "message"):
                inner = get(event, holder)
                if inner is not None and not isinstance(inner, str):
                    usage = get(inner, "usage")
                    break
        # providers report running totals, some fields in one event and some in another
        # (Anthropic: input in message_start, output in message_delta): last value wins
        self.raw.update(usage_fields(usage))
        self._collect_text(event)

    @property
    def reported(self) -> dict[str, int]:
        """The normalised counts reported so far (see :func:`~.extract.usage_counts`)."""
        return usage_counts(self.raw) or {}

    def _collect_text(self, event: Any) -> None:
        delta = get(event, "delta")
        if isinstance(delta, str):  # Responses: output_text / arguments / reasoning deltas
            self.text_parts.append(delta)
        elif delta is not None:  # Anthropic content_block_delta
            for key in ("text", "thinking", "partial_json"):
                value = get(delta, key)
                if isinstance(value, str):
                    self.text_parts.append(value)
        for choice in get(event, "choices") or ():  # OpenAI chat / completions chunks
            text = get(choice, "text")
            if isinstance(text, str):
                self.text_parts.append(text)
            message = get(choice, "delta")
            if message is None:
                continue
            for key in ("content", "reasoning_content", "reasoning"):
                value = get(message, key)
                if isinstance(value, str):
                    self.text_parts.append(value)
            for call in get(message, "tool_calls") or ():
                arguments = get(get(call, "function"), "arguments")
                if isinstance(arguments, str):
                    self.text_parts.append(arguments)

    @property
    def counted_output(self) -> int:
        """Output tokens counted from the text seen so far."""
        return text_tokens("".join(self.text_parts), self.tokenizer)

    def usage(self, *, completed: bool) -> Usage:
        """Usage to commit: see the module doc."""
        reported = self.reported
        counts = dict(reported)
        counts.setdefault("input", self.estimate.input_tokens)
        if not (completed and "output" in reported):
            counts["output"] = max(reported.get("output", 0), self.counted_output)
        cached = counts["cached"] = min(counts.get("cached", 0), counts["input"])
        counts["cache_write"] = min(counts.get("cache_write", 0), counts["input"] - cached)
        counts["reasoning"] = min(counts.get("reasoning", 0), counts["output"])
        return usage_from_counts(counts)


class _StreamGuard:
    # Built by guarded_stream / guarded_astream *after* an allowed check: the check runs in
    # the factory's frame, never in one that holds the stream (a traceback kept by a backend
    # must not pin the stream and stop it from being finalized when abandoned).
    def __init__(self, decision: Decision, estimate: Usage, tokenizer: Tokenizer | None,
                 on_commit: OnCommit | None) -> None:
        assert decision.allowed and decision.reservation is not None
        self.decision = decision
        self.reservation = decision.reservation
        self.subject = decision.subject
        self.estimate = estimate
        self.on_commit = on_commit
        self.tracker = StreamUsage(estimate, tokenizer)
        self.result: SettleResult | None = None
        self.completed = False
        self.settled = False
        self.source: Any = None

    @property
    def usage(self) -> Usage | None:
        """What was (or would now be) committed; ``None`` before the first chunk."""
        return self.tracker.usage(completed=self.completed) if self.tracker.chunks else None

    def _outcome(self) -> Usage | None:
        self.settled = True
        return self.usage


def _admitted(decision: Decision) -> Decision:
    if not decision.allowed:
        raise BudgetExceeded(decision)
    return decision


class GuardedStream(_StreamGuard, Generic[T]):
    """A sync stream under a budget reservation; build it with :func:`guarded_stream`.
    Iterate it; use it as a ``with`` block (or call :meth:`close`) so that stopping early
    commits at once (an abandoned stream commits when garbage collected)."""

    def __init__(self, limiter: BudgetLimiter, decision: Decision, estimate: Usage,
                 stream: SyncSource[T], *, tokenizer: Tokenizer | None = None,
                 on_commit: OnCommit | None = None) -> None:
        super().__init__(decision, estimate, tokenizer, on_commit)
        self.limiter = limiter
        try:
            self.source = stream() if callable(stream) and not isinstance(stream, Iterable) \
                else stream
            iterator = iter(self.source)
        except BaseException:
            self._settle()
            raise
        self._gen = self._run(iterator)

    def _run(self, iterator: Iterator[T]) -> Generator[T, None, None]:
        try:
            for chunk in iterator:
                self.tracker.feed(chunk)
                yield chunk
            self.completed = True
        finally:
            if not self.completed:
                with contextlib.suppress(Exception):
                    getattr(iterator, "close", lambda: None)()
            self._settle()

    def _settle(self) -> None:
        if self.settled:
            return
        usage = self._outcome()
        if usage is None:
            self.result = self.limiter.release(self.reservation)
            return
        self.result = self.limiter.commit(self.reservation, usage)
        if self.on_commit is not None:
            self.on_commit(Committed(self.subject, usage, self.result))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._gen)

    def close(self) -> None:
        """Stop the stream (closing the source) and settle what was consumed."""
        self._gen.close()
        self._settle()

    def __enter__(self) -> GuardedStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guarded_stream(limiter: BudgetLimiter, subject: Subject, estimate: Usage,
                   stream: SyncSource[T], *, tokenizer: Tokenizer | None = None,
                   ttl: float | None = None,
                   on_commit: OnCommit | None = None) -> GuardedStream[T]:
    """Check and reserve ``estimate`` now (raises :class:`BudgetExceeded` when denied), open
    ``stream`` (an iterable, or a callable returning one) and return it guarded."""
    decision = _admitted(limiter.check(subject, estimate, ttl=ttl))
    return GuardedStream(limiter, decision, estimate, stream, tokenizer=tokenizer,
                         on_commit=on_commit)


class AsyncGuardedStream(_StreamGuard, Generic[T]):
    """Asyncio twin of :class:`GuardedStream`; build it with :func:`guarded_astream`.
    ``async with`` it (or ``await`` :meth:`aclose`) so that stopping early commits at once; an
    abandoned stream is committed by the event loop's async-generator finalizer."""

    def __init__(self, limiter: AsyncBudgetLimiter, decision: Decision, estimate: Usage, *,
                 tokenizer: Tokenizer | None = None, on_commit: OnCommit | None = None) -> None:
        super().__init__(decision, estimate, tokenizer, on_commit)
        self.limiter = limiter
        self._gen: AsyncGenerator[T, None] | None = None

    async def _open(self, stream: AsyncSource[T]) -> AsyncGuardedStream[T]:
        try:
            source: Any = stream
            if callable(source) and not isinstance(source, AsyncIterable):
                source = source()
            if inspect.isawaitable(source):
                source = await source
            self.source = source
            iterator = aiter(source)
        except BaseException:
            await self._settle_shielded()
            raise
        self._gen = self._run(iterator)
        return self

    async def _run(self, iterator: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            async for chunk in iterator:
                self.tracker.feed(chunk)
                yield chunk
            self.completed = True
        finally:
            if not self.completed:
                closer = getattr(iterator, "aclose", None)
                with contextlib.suppress(Exception):
                    if closer is not None:
                        await closer()
            await self._settle_shielded()

    async def _settle_shielded(self) -> None:
        if self.settled:
            return
        # shielded: a cancelled consumer (client disconnect) still commits what it consumed
        await asyncio.shield(self._settle())

    async def _settle(self) -> None:
        usage = self._outcome()
        if usage is None:
            self.result = await self.limiter.release(self.reservation)
            return
        self.result = await self.limiter.commit(self.reservation, usage)
        if self.on_commit is not None:
            done = self.on_commit(Committed(self.subject, usage, self.result))
            if inspect.isawaitable(done):
                await done

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        assert self._gen is not None, "open the stream with guarded_astream()"
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop the stream (closing the source) and settle what was consumed."""
        if self._gen is not None:
            await self._gen.aclose()
        await self._settle_shielded()

    async def __aenter__(self) -> AsyncGuardedStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _AsyncOpener(Generic[T]):
    """What :func:`guarded_astream` returns: ``await`` it, or ``async with`` it."""

    def __init__(self, limiter: AsyncBudgetLimiter, subject: Subject, estimate: Usage,
                 stream: AsyncSource[T], tokenizer: Tokenizer | None, ttl: float | None,
                 on_commit: OnCommit | None) -> None:
        self._args = (limiter, subject, estimate, stream, tokenizer, ttl, on_commit)
        self._opened: AsyncGuardedStream[T] | None = None

    async def _open(self) -> AsyncGuardedStream[T]:
        limiter, subject, estimate, stream, tokenizer, ttl, on_commit = self._args
        decision = _admitted(await limiter.check(subject, estimate, ttl=ttl))
        guarded: AsyncGuardedStream[T] = AsyncGuardedStream(
            limiter, decision, estimate, tokenizer=tokenizer, on_commit=on_commit)
        return await guarded._open(stream)

    def __await__(self) -> Generator[Any, None, AsyncGuardedStream[T]]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncGuardedStream[T]:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, *exc: object) -> None:
        if self._opened is not None:
            await self._opened.aclose()


def guarded_astream(limiter: AsyncBudgetLimiter, subject: Subject, estimate: Usage,
                    stream: AsyncSource[T], *, tokenizer: Tokenizer | None = None,
                    ttl: float | None = None,
                    on_commit: OnCommit | None = None) -> _AsyncOpener[T]:
    """The async guarded stream: ``await`` it or enter it with ``async with`` to check and
    reserve ``estimate`` (raises :class:`BudgetExceeded` when denied), then open ``stream``
    (an async iterable, an awaitable of one, or a callable returning either)."""
    return _AsyncOpener(limiter, subject, estimate, stream, tokenizer, ttl, on_commit)
