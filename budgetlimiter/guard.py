"""Guards: check → call → commit, with release on error, as ``with`` blocks and decorators."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BudgetExceeded
from .extract import Extractor, extract_usage
from .results import Decision, SettleResult
from .subject import Subject
from .usage import Usage

if TYPE_CHECKING:
    from .aio import AsyncBudgetLimiter
    from .client import BudgetLimiter

F = TypeVar("F", bound=Callable[..., Any])
__all__ = ["AsyncGuard", "Committed", "Extractor", "Guard", "OnCommit"]


@dataclass(frozen=True, slots=True)
class Committed:
    """What a guard committed, handed to its ``on_commit`` hook (e.g. a billing system).

    ``result.id`` is the reservation id: stable across retries, use it to deduplicate.
    ``result.status`` is ``"committed"``, ``"duplicate"`` (a retried commit) or ``"local"``
    (kept in-process during a Redis outage, replayed later).
    """

    subject: Subject
    usage: Usage
    result: SettleResult

    @property
    def cost_usd(self) -> Decimal | None:
        """The committed cost in USD as counted by the limiter."""
        return self.result.cost_usd


#: hook called after each successful commit; an async guard also awaits an awaitable result
OnCommit = Callable[[Committed], Any]


class _GuardState:
    def __init__(self, subject: Subject, estimate: Usage, extract: Extractor | None,
                 ttl: float | None, on_commit: OnCommit | None = None) -> None:
        self.subject = subject
        self.estimate = estimate
        self.extract = extract or extract_usage
        self.ttl = ttl
        self.on_commit = on_commit
        self.decision: Decision | None = None
        self.actual: Usage | None = None
        self.result: SettleResult | None = None

    def set_actual(self, usage: Usage) -> None:
        """Tell the guard what the call really used (committed when the block exits)."""
        self.actual = usage

    def _admitted(self, decision: Decision) -> None:
        self.decision = decision
        if not decision.allowed:
            raise BudgetExceeded(decision)

    def _usage_of(self, value: Any) -> Usage:
        found = self.extract(value)
        return found if found is not None else self.estimate


class Guard(_GuardState):
    """Sync guard. In a ``with`` block, call :meth:`set_actual`; if you don't, the estimate is
    committed (a conservative default). As a decorator, usage comes from the return value."""

    def __init__(self, limiter: BudgetLimiter, subject: Subject, estimate: Usage, *,
                 extract: Extractor | None = None, ttl: float | None = None,
                 on_commit: OnCommit | None = None) -> None:
        super().__init__(subject, estimate, extract, ttl, on_commit)
        self.limiter = limiter

    def __enter__(self) -> Guard:
        self._admitted(self.limiter.check(self.subject, self.estimate, ttl=self.ttl))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.decision is not None and self.decision.reservation is not None
        if exc_type is not None:
            self.limiter.release(self.decision.reservation)
            return
        usage = self.actual or self.estimate
        self.result = self.limiter.commit(self.decision.reservation, usage)
        if self.on_commit is not None:
            self.on_commit(Committed(self.subject, usage, self.result))

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            raise TypeError("use AsyncBudgetLimiter.guard to wrap async functions")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            guard = Guard(self.limiter, self.subject, self.estimate, extract=self.extract,
                          ttl=self.ttl, on_commit=self.on_commit)
            with guard:
                value = fn(*args, **kwargs)
                guard.set_actual(guard._usage_of(value))
            return value

        return wrapper  # type: ignore[return-value]


class AsyncGuard(_GuardState):
    """Asyncio guard: ``async with`` block or decorator of coroutine functions."""

    def __init__(self, limiter: AsyncBudgetLimiter, subject: Subject, estimate: Usage, *,
                 extract: Extractor | None = None, ttl: float | None = None,
                 on_commit: OnCommit | None = None) -> None:
        super().__init__(subject, estimate, extract, ttl, on_commit)
        self.limiter = limiter

    async def __aenter__(self) -> AsyncGuard:
        self._admitted(await self.limiter.check(self.subject, self.estimate, ttl=self.ttl))
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.decision is not None and self.decision.reservation is not None
        if exc_type is not None:
            await self.limiter.release(self.decision.reservation)
            return
        usage = self.actual or self.estimate
        self.result = await self.limiter.commit(self.decision.reservation, usage)
        if self.on_commit is not None:
            done = self.on_commit(Committed(self.subject, usage, self.result))
            if inspect.isawaitable(done):
                await done

    def __call__(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("AsyncBudgetLimiter.guard wraps coroutine functions")

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            guard = AsyncGuard(self.limiter, self.subject, self.estimate, extract=self.extract,
                               ttl=self.ttl, on_commit=self.on_commit)
            async with guard:
                value = await fn(*args, **kwargs)
                guard.set_actual(guard._usage_of(value))
            return value

        return wrapper
