"""The guard as a context manager and as a decorator, on both clients (the asyncio one's
``async with`` guard through the adapter of tests/clients.py; tests/test_async.py decorates real
coroutine functions)."""

from __future__ import annotations

import pytest

from budgetlimiter import BudgetExceeded, Subject, Usage

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def team_counter(bl):
    return next(s for s in bl.status(ALICE) if str(s.scope) == "org:acme/team:eng")


def test_guard_commits_actual_and_releases_on_error(make_limiter):
    bl = make_limiter(BASIC)
    with bl.guard(ALICE, Usage(input_tokens=500)) as g:
        g.set_actual(Usage(input_tokens=120))
    assert g.result.status == "committed"
    with pytest.raises(ValueError), bl.guard(ALICE, Usage(input_tokens=500)):
        raise ValueError("agent failed")
    c = team_counter(bl)
    assert (c.used, c.reserved) == (120, 0)


def test_guard_decorator_extracts_usage_from_openai_shape(make_limiter):
    bl = make_limiter(BASIC)

    @bl.guard(ALICE, Usage(input_tokens=100, output_tokens=300))
    def ask(prompt: str) -> dict:
        return {"usage": {"prompt_tokens": 40, "completion_tokens": 30}}

    assert ask("hi")["usage"]["prompt_tokens"] == 40
    assert team_counter(bl).used == 40 + 2 * 30


def test_guard_raises_budget_exceeded_when_denied(make_limiter):
    bl = make_limiter(BASIC)
    called = []

    @bl.guard(ALICE, Usage(input_tokens=5000))
    def ask() -> None:
        called.append(1)

    with pytest.raises(BudgetExceeded) as info:
        ask()
    assert called == []
    assert str(info.value.decision.blocked_by.scope) == "org:acme/team:eng"


@pytest.mark.sync_only("the sync client's own refusal of coroutine functions")
def test_guard_refuses_async_functions_on_sync_client(make_limiter):
    bl = make_limiter(BASIC)
    with pytest.raises(TypeError):
        @bl.guard(ALICE)
        async def f() -> None: ...
