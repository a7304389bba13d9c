"""The asyncio client over the same core, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from budgetlimiter import AsyncBudgetLimiter, BudgetExceeded, Subject, Usage, parse_policy

from .policies import BASIC

ALICE = Subject("acme", "gpt", team="eng", user="alice")


@pytest.fixture
def make_async(backend_url, clock):
    def make(text: str = BASIC) -> AsyncBudgetLimiter:
        return AsyncBudgetLimiter(parse_policy(text), backend_url, clock=clock, timeout=2)

    return make


def run(coro):
    return asyncio.run(coro)


def test_async_check_commit_release_record_status(make_async):
    async def main() -> None:
        bl = make_async()
        d = await bl.check(ALICE, Usage(input_tokens=300))
        assert d.allowed
        assert (await bl.commit(d.reservation, Usage(input_tokens=100))).status == "committed"
        assert (await bl.commit(d.reservation, Usage(input_tokens=100))).status == "duplicate"
        d2 = await bl.check(ALICE, Usage(input_tokens=300))
        assert (await bl.release(d2.reservation)).status == "released"
        assert (await bl.record(ALICE, Usage(input_tokens=50), request_id="x")).status == "recorded"
        team = next(s for s in await bl.status(ALICE) if str(s.scope) == "org:acme/team:eng")
        assert (team.used, team.reserved) == (150, 0)
        batch = await bl.check_batch([(ALICE, Usage(input_tokens=400))] * 3)
        assert [b.allowed for b in batch] == [True, True, False]
        await bl.aclose()

    run(main())


def test_async_guard_context_manager_and_decorator(make_async):
    async def main() -> None:
        bl = make_async()
        async with bl.guard(ALICE, Usage(input_tokens=500)) as g:
            g.set_actual(Usage(input_tokens=100))
        assert g.result is not None and g.result.status == "committed"

        @bl.guard(ALICE, Usage(input_tokens=500))
        async def call_model() -> dict:
            return {"usage": {"prompt_tokens": 200, "completion_tokens": 0}}

        await call_model()

        @bl.guard(ALICE, Usage(input_tokens=500))
        async def failing() -> None:
            raise RuntimeError("upstream 500")

        with pytest.raises(RuntimeError):
            await failing()
        team = next(s for s in await bl.status(ALICE) if str(s.scope) == "org:acme/team:eng")
        assert (team.used, team.reserved) == (300, 0)
        with pytest.raises(BudgetExceeded) as info:
            async with bl.guard(ALICE, Usage(input_tokens=800)):
                pass
        assert not info.value.decision.allowed
        await bl.aclose()

    run(main())


def test_concurrent_async_tasks_never_overshoot(make_async):
    async def main() -> int:
        bl = make_async()
        checks = [bl.check(ALICE, Usage(input_tokens=7)) for _ in range(300)]
        results = await asyncio.gather(*checks)
        await bl.aclose()
        return sum(d.allowed for d in results)

    assert run(main()) == 1000 // 7
