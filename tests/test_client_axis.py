"""The client axis itself: the asyncio row really drives an AsyncBudgetLimiter, on its own
loop, and cleans up after itself."""

from __future__ import annotations

import threading

import pytest

from budgetlimiter import (
    AsyncBudgetLimiter,
    BudgetLimiter,
    InvalidInput,
    Subject,
    Usage,
    parse_policy,
)

from .clients import LoopThreadClient, make_client
from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def test_each_row_builds_its_client(make_limiter, client_kind):
    bl = make_limiter(BASIC)
    if client_kind == "sync":
        assert type(bl) is BudgetLimiter
    else:
        assert isinstance(bl, LoopThreadClient)
        assert type(bl.wrapped) is AsyncBudgetLimiter
    d = bl.check(ALICE, Usage(input_tokens=10))  # a result, never a coroutine
    assert d.allowed and bl.commit(d.reservation, Usage(input_tokens=5)).status == "committed"


@pytest.fixture
def adapted(backend_url, clock):
    bl = make_client("asyncio", parse_policy(BASIC), backend_url, clock=clock, timeout=2.0)
    yield bl
    bl.close()


def test_adapter_awaits_on_its_loop_and_raises_what_the_client_raises(adapted):
    bl = adapted
    seen: list[threading.Thread] = []
    real_now = bl.engine.now

    def now() -> int:
        seen.append(threading.current_thread())
        return real_now()

    bl.engine.now = now  # the engine plans on the loop's thread
    bl.marker = 1  # attributes are written through to the client
    assert bl.wrapped.marker == 1
    bl.status(ALICE)
    assert seen and all(t.name == "asyncio-client" for t in seen)
    with pytest.raises(InvalidInput):
        bl.check(ALICE, Usage(), ttl=-5)
    bl.close()
    bl.close()  # idempotent
    assert bl.loop.is_closed()


def test_adapter_guard_commits_and_releases(adapted):
    bl = adapted
    with bl.guard(ALICE, Usage(input_tokens=500)) as g:
        g.set_actual(Usage(input_tokens=120))
    assert g.result.status == "committed"
    with pytest.raises(ValueError), bl.guard(ALICE, Usage(input_tokens=500)):
        raise ValueError("agent failed")
    team = next(s for s in bl.status(ALICE) if str(s.scope) == "org:acme/team:eng")
    assert (team.used, team.reserved) == (120, 0)
