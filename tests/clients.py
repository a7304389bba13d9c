"""The client axis: one synchronous test body drives either client.

:class:`LoopThreadClient` runs an :class:`~budgetlimiter.AsyncBudgetLimiter` on an event loop of
its own, in a background thread, and offers the synchronous API of
:class:`~budgetlimiter.BudgetLimiter`: a coroutine method is awaited on that loop and its result
returned; any other method is called on the loop's thread as well (asyncio code may need a
running loop, and the loop's timers touch the same state). Attributes pass through, reads and
writes. Nothing here names the client's internals: methods are found by ``__getattr__``, so the
adapter keeps working when they change.

Test threads may call it concurrently: each call becomes one task on the loop, so N threads
give N concurrent tasks, the asyncio client's own kind of concurrency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from budgetlimiter import AsyncBudgetLimiter, BudgetLimiter, Policy

#: the two clients every behaviour test runs on
CLIENT_KINDS = ("sync", "asyncio")
#: longest a single adapted call may take before the test fails (a hang is a finding)
CALL_TIMEOUT = 30.0


def make_client(kind: str, policy: Policy, url: str, **kwargs: Any) -> Any:
    """A ``BudgetLimiter`` (``kind="sync"``) or an ``AsyncBudgetLimiter`` behind the same
    synchronous API (``kind="asyncio"``)."""
    if kind == "sync":
        return BudgetLimiter(policy, url, **kwargs)
    if kind == "asyncio":
        return LoopThreadClient(lambda: AsyncBudgetLimiter(policy, url, **kwargs))
    raise ValueError(f"unknown client kind {kind!r}")


_OWN = frozenset({"_loop", "_thread", "_timeout", "_closed", "_client"})


class LoopThreadClient:
    """An asyncio client on a dedicated event loop, called synchronously."""

    def __init__(self, build: Callable[[], Any], *, timeout: float = CALL_TIMEOUT) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="asyncio-client", daemon=True)
        thread.start()
        object.__setattr__(self, "_loop", loop)
        object.__setattr__(self, "_thread", thread)
        object.__setattr__(self, "_timeout", timeout)
        object.__setattr__(self, "_closed", False)
        try:
            client = self._on_loop(build)  # built where it will run
        except BaseException:
            self._stop_loop()
            raise
        object.__setattr__(self, "_client", client)

    # running things on the loop ---------------------------------------------------------
    def _in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _await(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._in_loop_thread():  # e.g. a hook the client calls back into the test
            coro.close()
            raise RuntimeError("cannot wait for the asyncio client from its own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` on the loop's thread; await what it returns if that is awaitable."""
        if self._in_loop_thread():
            return fn(*args, **kwargs)

        async def call() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return self._await(call())

    # the public surface ------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set yet (a failed __init__): never recurse
            raise AttributeError(name)
        value = getattr(self._client, name)
        if not callable(value) or inspect.isclass(value):
            return value

        @functools.wraps(value)
        def method(*args: Any, **kwargs: Any) -> Any:
            return self._on_loop(value, *args, **kwargs)

        return method

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)

    @property
    def wrapped(self) -> Any:
        """The AsyncBudgetLimiter itself (for tests that await it on :attr:`loop`)."""
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def guard(self, *args: Any, **kwargs: Any) -> SyncGuard:
        return SyncGuard(self, self._on_loop(self._client.guard, *args, **kwargs))

    def close(self) -> None:
        """``aclose()`` the client, then stop and close the loop. Idempotent."""
        if self._closed:
            return
        object.__setattr__(self, "_closed", True)
        try:
            self._await(self._client.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        async def drain() -> None:
            # whatever the client left running (it should be nothing) must not outlive the loop
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self._loop.shutdown_asyncgens()
            await self._loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(self._timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            self._loop.close()

    def __enter__(self) -> LoopThreadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LoopThreadClient({self._client!r})"


class SyncGuard:
    """The asyncio guard as a sync ``with`` block and decorator of plain functions (the
    decorated function runs on the client's loop, inside the guard)."""

    def __init__(self, client: LoopThreadClient, guard: Any) -> None:
        self._client = client
        self._guard = guard

    def __getattr__(self, name: str) -> Any:  # set_actual, result, decision, ...
        return getattr(self._guard, name)

    def __enter__(self) -> SyncGuard:
        self._client._on_loop(self._guard.__aenter__)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        return self._client._on_loop(self._guard.__aexit__, exc_type, exc, tb)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            raise TypeError("the adapted guard decorates plain functions")

        @functools.wraps(fn)
        async def as_coroutine(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        guarded = self._guard(as_coroutine)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self._client._on_loop(guarded, *args, **kwargs)

        return wrapper
