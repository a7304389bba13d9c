"""What is mutated, and which tests judge each file.

Rows: one row of the test table (:data:`ROWS`). Tests outside the table (the model-based
test on ``memory://``, direct script tests) run as they are. Slow, timing-sensitive tests
(chaos, concurrency) are not in any selection: a mutant must be judged by the same
deterministic tests every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: the one row of the test table a mutant is judged on (parametrized fixture -> value; tests
#: without the fixture run as they are). Both kinds of file run on the real redis-server
#: (faster than fakeredis's Lua through lupa, and memory:// runs the same scripts), the sync
#: client (both clients send the same calls, planned by the same engine) and SQLite (the SQL
#: store is not mutated; PostgreSQL adds a schema per test and nothing the rules can see).
ROWS = {"backend_url": "redis", "client_kind": "sync", "store_url": "sqlite"}
LUA_ROWS = PY_ROWS = ROWS

MODEL = "tests/test_properties.py::test_hot_path_matches_a_simple_model"

#: tests of check.lua (admission, sweep, rollover, rates) and of its planning
CHECK_TESTS = (
    "tests/test_rollover_model.py",
    "tests/test_gcra_burst.py",
    "tests/test_sweep_paths.py",
    "tests/test_key_expiry.py",
    "tests/test_hot_path.py",
    "tests/test_held_counter.py",
    "tests/test_period_boundaries.py",
    "tests/test_clock_skew.py",
    "tests/test_exact_ttls.py",
    "tests/test_reservation_ttl.py",
    "tests/test_full_path.py",
    "tests/test_rate_refill_exact.py",
    "tests/test_deny_cache.py",
    "tests/test_leases.py",
    "tests/test_scripts.py",
    "tests/test_limit_status.py",
    "tests/test_edges_keep_limits.py",
    "tests/test_lease_handback.py",
    "tests/test_sweep_lost_reservations.py",
    "tests/test_carry_from_partial_counters.py",
    "tests/test_rate_zero_estimates.py",
    "tests/test_admitted_replies.py",
    "tests/test_hot_path_commands.py",
    "tests/test_planner_templates.py",
    "tests/test_stored_plans.py",  # a soft budget left at zero is leased (hard_metrics)
    MODEL,
)
#: tests of settle.lua (commit, release, record, shrink, thresholds) and of its planning
SETTLE_TESTS = (
    "tests/test_rollover_model.py",
    "tests/test_key_expiry.py",
    "tests/test_sweep_paths.py",
    "tests/test_hot_path.py",
    "tests/test_held_counter.py",
    "tests/test_alerts_e2e.py",
    "tests/test_leases.py",
    "tests/test_lease_edges.py",
    "tests/test_lease_handback.py",
    "tests/test_edges_keep_limits.py",
    "tests/test_limit_status.py",
    "tests/test_exact_ttls.py",
    "tests/test_zero_usage.py",
    "tests/test_reconciler.py",  # the ledger settle writes is what the reconciler flushes
    "tests/test_restore_exact.py",
    "tests/test_stored_plans.py",
    "tests/test_clock_skew.py",
    "tests/test_settle_replies.py",
    MODEL,
)
#: tests of the reconciler's scripts (flush, ack, rebuild) and of adjustments
DURABLE_TESTS = (
    "tests/test_key_expiry.py",
    "tests/test_restore_exact.py",
    "tests/test_ack_script.py",
    "tests/test_reconciler.py",
    "tests/test_adjustments.py",
    "tests/test_held_counter.py",
    "tests/test_rebuild_script.py",
    "tests/test_flush_orgs.py",
    "tests/test_adjust_script.py",
)


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for g in groups:
        for t in g:
            seen.setdefault(t, None)
    return tuple(seen)


@dataclass(frozen=True)
class Target:
    """One mutated file: the tests that judge it, and the rows they run on."""

    path: str
    tests: tuple[str, ...]
    rows: dict[str, str]
    #: Python files: the functions mutated (None: the whole file); Lua files: None
    functions: frozenset[str] | None = None
    #: modules the fork server imports once before any mutant runs. A Python target's own
    #: package cannot be among them (each mutant imports its mutated copy afresh).
    preimport: tuple[str, ...] = field(default=())

    @property
    def is_lua(self) -> bool:
        return self.path.endswith(".lua")


_THIRD_PARTY = ("pytest", "redis", "fakeredis", "lupa", "hypothesis", "pydantic", "sqlalchemy",
                "click", "yaml", "httpx", "starlette", "prometheus_client")
_PACKAGE = ("budgetlimiter", "budgetlimiter.durable.store.sql", "budgetlimiter.durable.restore",
            "budgetlimiter.durable.reconciler", "budgetlimiter.durable.adjust")


def _lua(path: str, tests: tuple[str, ...]) -> Target:
    return Target(path, tests, LUA_ROWS, preimport=_THIRD_PARTY + _PACKAGE)


TARGETS: dict[str, Target] = {t.path: t for t in (
    _lua("lua/lib.lua", _union(CHECK_TESTS, SETTLE_TESTS, DURABLE_TESTS)),
    _lua("lua/check.lua", CHECK_TESTS),
    _lua("lua/settle.lua", SETTLE_TESTS),
    _lua("lua/adjust.lua", DURABLE_TESTS),
    _lua("lua/flush.lua", DURABLE_TESTS),
    _lua("lua/ack.lua", DURABLE_TESTS),
    _lua("lua/rebuild.lua", DURABLE_TESTS),
    _lua("lua/lease.lua", ("tests/test_lease_script.py", "tests/test_reconcile_lease.py",
                              "tests/test_sidecar_reconcile.py")),
    Target("budgetlimiter/engine/planner.py", CHECK_TESTS,
           PY_ROWS, frozenset({"_check_args", "_template", "plan_check", "plan_lines"}),
           _THIRD_PARTY),
    Target("budgetlimiter/engine/settle_plan.py", SETTLE_TESTS, PY_ROWS, None, _THIRD_PARTY),
)}
