"""The org lease (lua/lease.lua and durable.ownership.Leases) and the reconciler under it:
take, renew, lose, release only one's own; with two reconcilers on one Redis and one database
each org is reconciled by one, the other takes over when the lease is gone, totals exact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.ownership import Leases
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.service import ReconcileService, build_sinks
from budgetlimiter.engine.work_lease import lease_call, parse_lease

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme: {limits: [{metric: cost, amount: "100", period: day}]}
  beta: {limits: [{metric: cost, amount: "100", period: day}]}
"""


@pytest.fixture
def bl(backend_url: str, clock: Any) -> Iterator[BudgetLimiter]:
    limiter = BudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2)
    yield limiter
    limiter.close()


def call(bl: BudgetLimiter, op: str, holder: str, ms: int = 5000, org: str = "acme") -> Any:
    return bl.execute(lease_call(bl.keys.reconcile_lease(org), op, holder, ms))  # type: ignore[arg-type]


def expire(raw: Any, key: str) -> None:
    """Let the lease run out (its holder died): PEXPIRE 1 ms, then wait until it is gone."""
    raw.pexpire(key, 1)
    deadline = time.monotonic() + 5
    while raw.exists(key) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not raw.exists(key)


# -- the script ----------------------------------------------------------------------------
def test_take_holds_a_free_lease_and_refuses_a_held_one(bl, raw_redis):
    first = call(bl, "take", "a", 4000)
    assert (first.ours, first.holder, first.ms_left) == (True, "a", 4000)
    other = call(bl, "take", "b")
    assert (other.ours, other.holder) == (False, "a")
    assert 0 < other.ms_left <= 4000
    assert raw_redis.get(bl.keys.reconcile_lease("acme")) == b"a"


def test_renew_extends_only_the_holders_lease(bl, raw_redis):
    call(bl, "take", "a", 1000)
    assert call(bl, "renew", "a", 9000).ours
    assert raw_redis.pttl(bl.keys.reconcile_lease("acme")) > 1000
    assert not call(bl, "renew", "b", 9000).ours
    assert raw_redis.get(bl.keys.reconcile_lease("acme")) == b"a"


def test_renew_fails_when_the_lease_ran_out_when_nobody_took_it(bl, raw_redis):
    call(bl, "take", "a")
    expire(raw_redis, bl.keys.reconcile_lease("acme"))
    lost = call(bl, "renew", "a")
    assert (lost.ours, lost.holder, lost.ms_left) == (False, "", 0)
    assert not raw_redis.exists(bl.keys.reconcile_lease("acme"))  # renew never takes


def test_a_lease_that_ran_out_goes_to_the_next_taker_and_the_old_holder_loses_it(bl, raw_redis):
    call(bl, "take", "a")
    expire(raw_redis, bl.keys.reconcile_lease("acme"))
    assert call(bl, "take", "b").ours
    assert not call(bl, "renew", "a").ours
    assert call(bl, "take", "a").holder == "b"


def test_release_deletes_only_the_holders_lease(bl, raw_redis):
    call(bl, "take", "a")
    refused = call(bl, "release", "b")
    assert (refused.ours, refused.holder) == (False, "a")
    assert raw_redis.get(bl.keys.reconcile_lease("acme")) == b"a"
    assert call(bl, "release", "a").ours
    assert not raw_redis.exists(bl.keys.reconcile_lease("acme"))
    assert not call(bl, "release", "a").ours  # twice: nothing left to release


def test_leases_of_two_orgs_are_independent_and_in_their_orgs_slot(bl):
    assert call(bl, "take", "a", org="acme").ours
    assert call(bl, "take", "b", org="beta").ours
    assert bl.keys.reconcile_lease("ac{m}e").startswith(bl.keys.org_base("ac{m}e") + ":")


def test_bad_lease_arguments_are_refused_before_redis():
    with pytest.raises(ValueError, match="at least 1 ms"):
        lease_call("k", "take", "a", 0)
    assert parse_lease([b"0", b"", b"-2"]).ms_left == 0


# -- Leases: the process side -------------------------------------------------------------
def test_leases_ask_again_for_an_org_held_elsewhere_only_after_a_while(bl):
    now = [100.0]
    mine = Leases(bl, bl.keys.reconcile_lease, holder="me", lease_s=6, monotonic=lambda: now[0])
    assert call(bl, "take", "other", 6000).ours
    calls = []
    real = bl.execute
    bl.execute = lambda c: calls.append(c) or real(c)  # type: ignore[method-assign]
    try:
        assert not mine.hold("acme")
        assert not mine.hold("acme")  # cached: no second call
        assert len(calls) == 1
        now[0] += 3.1  # half the lease: ask again
        assert not mine.hold("acme")
        assert len(calls) == 2
    finally:
        bl.execute = real  # type: ignore[method-assign]


def test_release_all_gives_back_only_what_this_process_holds(bl, raw_redis):
    mine = Leases(bl, bl.keys.reconcile_lease, holder="me", lease_s=6)
    assert mine.hold("acme") and mine.hold("beta")
    assert mine.held() == {"acme", "beta"}
    assert call(bl, "take", "other", org="gamma").ours
    assert mine.release_all() == 2
    assert mine.held() == set()
    assert not raw_redis.exists(bl.keys.reconcile_lease("acme"))
    assert raw_redis.get(bl.keys.reconcile_lease("gamma")) == b"other"


def test_a_holder_notices_it_lost_its_lease(bl, raw_redis):
    mine = Leases(bl, bl.keys.reconcile_lease, holder="me", lease_s=6)
    assert mine.hold("acme")
    raw_redis.set(bl.keys.reconcile_lease("acme"), "other", px=6000)  # it stalled; taken
    assert not mine.hold("acme")
    assert mine.held() == set()


# -- the reconciler under leases ----------------------------------------------------------
def test_two_reconcilers_reconcile_each_org_once_and_the_second_takes_over(
        bl, make_store, raw_redis):
    store = make_store()
    alice = Subject("acme", "gpt", team="eng", user="alice")
    for i in range(3):
        bl.record(alice, Usage(input_tokens=1000), request_id=f"a{i}")
    one = Reconciler(bl, store, leases=Leases(bl, bl.keys.reconcile_lease, holder="one"))
    two = Reconciler(bl, make_store(), leases=Leases(bl, bl.keys.reconcile_lease, holder="two"))
    first = one.run_once()
    assert first.flushes == 1 and first.elsewhere == 0
    bl.record(alice, Usage(input_tokens=1000), request_id="a3")
    second = two.run_once()
    assert second.flushes == 0 and second.elsewhere == 1  # acme is one's
    assert raw_redis.get(bl.keys.reconciled("acme")) is not None
    # one dies: its lease runs out, two takes the org over and flushes what one left
    expire(raw_redis, bl.keys.reconcile_lease("acme"))
    two.leases._elsewhere.clear()  # type: ignore[union-attr]  # its wait is wall-clock
    taken = two.run_once()
    assert taken.flushes == 1 and taken.elsewhere == 0
    rows = store.usage_rows("acme", "0000-01-01", "9999-12-31")
    assert sum(r.input_tokens for r in rows) == 4000
    assert sum(r.invocations for r in rows) == 4


def test_the_service_snapshot_says_who_holds_each_org_and_how_far_behind(bl, make_store):
    bl.record(Subject("acme", "gpt"), Usage(input_tokens=10), request_id="r")
    service = ReconcileService(bl, make_store(), build_sinks((), None), holder="me")
    stats, delivered = service.run_once()
    service.take_snapshot()
    snap = service.snapshot
    assert snap is not None and snap.error == "" and snap.backlog == 0
    (acme,) = [o for o in snap.orgs if o.org == "acme"]
    assert acme.holder == "me" and acme.reconciled_ms == bl.clock()
    assert stats.flushes == 1 and delivered == 0


def test_webhooks_without_a_secret_are_refused():
    with pytest.raises(ValueError, match="secret"):
        build_sinks(("http://127.0.0.1:9/x",), None)


def test_a_reloaded_policy_is_recorded_on_the_next_pass(bl, make_store, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    store = make_store()
    service = ReconcileService(bl, store, build_sinks((), None), policy_file=str(path))
    service.run_once()
    first = store.policy_in_force()
    assert first is not None and first[2] == POLICY
    newer = POLICY.replace('"100"', '"200"', 1)
    path.write_text(newer)
    service.set_policy(parse_policy(newer))
    service.run_once()
    now = store.policy_in_force()
    assert now is not None and now[2] == newer


def test_only_the_delivery_lease_holder_polls_the_outbox(bl, make_store):
    one = ReconcileService(bl, make_store(), build_sinks((), None), holder="one")
    two = ReconcileService(bl, make_store(), build_sinks((), None), holder="two")
    assert one._deliver_lease is not None and two._deliver_lease is not None
    assert one._deliver_lease.hold("deliver")
    assert not two._deliver_lease.hold("deliver")

    class NoOutbox:
        def claim_due(self, *args: Any) -> list[Any]:
            raise AssertionError("a process without the lease claimed deliveries")

    calls = []

    def gate() -> bool:  # not the holder; ends the loop after a few passes
        calls.append(1)
        if len(calls) == 3:
            two.stop_event.set()
        return False

    two.deliverer.outbox = NoOutbox()  # type: ignore[assignment]
    two.deliverer.run_forever(two.stop_event, 0.001, gate)
    assert len(calls) == 3


def test_the_worker_config_keeps_the_reconcile_settings(monkeypatch):
    from budgetlimiter.server.config import ServerConfig, dump_env_config, load_env_config

    config = ServerConfig(db_url="sqlite://", reconcile=True, reconcile_interval=0.5,
                          reconcile_lease=3, webhooks=("http://127.0.0.1:9/h",),
                          webhook_secret_env="MY_SECRET")
    monkeypatch.setenv("BUDGETLIMITER_SERVE_CONFIG", dump_env_config(config))
    assert load_env_config() == config
