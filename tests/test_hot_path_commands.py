"""What an admitted check costs Redis on the hot path (check.lua's one-HINCRBY path), counted
by Redis itself (INFO commandstats counts the commands a script runs): one HINCRBY per
budget (one HGET for an estimate of 0) and no other read of a counter, when no carry is
involved, up to a check that fills a budget exactly."""

from __future__ import annotations

from typing import Any

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy

from .policies import BASIC

pytestmark = pytest.mark.redis

ALICE = Subject("acme", "gpt", team="eng", user="alice")


def counter_commands(r: Any) -> dict[str, int]:
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats[name]["calls"]) for name in stats
            if name in ("cmdstat_hincrby", "cmdstat_hget", "cmdstat_hmget")}


def test_an_admitted_check_of_reset_budgets_costs_one_hincrby_per_budget(fresh_redis, clock):
    """ALICE's checks meet 3 reset budgets (org month, team day, user day); the team's is
    1000 micro-USD a day."""
    bl = BudgetLimiter(parse_policy(BASIC), fresh_redis.url, clock=clock, timeout=2.0)
    r = fresh_redis.client()
    try:
        bl.engine.sweep_sampler = lambda: False
        assert bl.check(ALICE, Usage(input_tokens=10)).allowed  # loads the script

        def costs(usage: Usage) -> dict[str, int]:
            r.config_resetstat()
            assert bl.check(ALICE, usage).allowed
            return counter_commands(r)

        assert costs(Usage(input_tokens=10)) == {"hincrby": 3}
        assert costs(Usage()) == {"hget": 3}  # an estimate of 0 reserves nothing
        assert costs(Usage(input_tokens=980)) == {"hincrby": 3}  # 20 + 980 = 1000 exactly
    finally:
        r.close()
        bl.close()
