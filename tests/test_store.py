"""The durable SQL store on SQLite and PostgreSQL: migrations, exactly-once flushes, the alert
outbox, policy versions and adjustments."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text

from budgetlimiter.durable.store import MIGRATIONS, FlushOutcome, Migration, Store
from budgetlimiter.durable.store.records import Adjustment, AlertEvent, UsageRow


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0..n-1)`` in ``n`` threads released at once; return results (re-raise errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def row(day: str = "2026-03-01", team: str = "eng", user: str = "alice", agent: str = "gpt",
        n: int = 1, inp: int = 10, out: int = 5, cost: int = 100, org: str = "acme"
        ) -> UsageRow:
    return UsageRow(org, team, user, agent, day, n, inp, out, inp + out, cost)


def event(threshold: int = 50, scope: str = "org:acme", period_id: str = "2026-03",
          occurred_ms: int = 1_000, org: str = "acme") -> AlertEvent:
    return AlertEvent(org=org, scope=scope, metric="cost", period="month",
                      period_id=period_id, threshold=threshold, used=threshold * 10,
                      limit=1000, occurred_ms=occurred_ms)


def totals(store: Store, org: str = "acme") -> dict[tuple[str, ...], tuple[int, ...]]:
    return {(r.team, r.user, r.agent, r.day): (r.invocations, r.input_tokens, r.output_tokens,
                                                r.total_tokens, r.cost)
            for r in store.usage_rows(org, "0000-01-01", "9999-12-31")}


# ---------------------------------------------------------------------------- migrations


def test_migrate_is_idempotent_and_versioned(store_url):
    store = Store(store_url.url, schema=store_url.schema)
    try:
        assert store.schema_version() == 0
        assert store.migrate() == len(MIGRATIONS) == 3
        assert store.migrate() == 3
        assert store.schema_version() == 3
        assert store.org_seq("acme") == 0 and store.known_orgs() == []
    finally:
        store.close()


def test_runner_applies_later_migrations_once(store_url):
    calls: list[int] = []

    def add_notes(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("CREATE TABLE bl_notes (id INTEGER PRIMARY KEY, note TEXT)"))

    n = len(MIGRATIONS)
    steps = (*MIGRATIONS, Migration(n + 1, "add notes", add_notes))
    stores = [Store(store_url, schema=None) for _ in range(3)]  # schema from the URL query
    try:
        assert stores[0].migrate() == n
        assert race(3, lambda i: stores[i].migrate(steps)) == [n + 1] * 3
        assert calls == [1]
        assert stores[1].migrate(steps) == n + 1 and stores[2].schema_version() == n + 1
        assert stores[0].migrate() == n + 1  # a newer database is left alone
        with pytest.raises(ValueError, match=f"version {n + 2}"):
            stores[0].migrate((*MIGRATIONS, Migration(n + 2, "gap", add_notes)))
    finally:
        for s in stores:
            s.close()


def test_concurrent_first_migrations(store_url):
    stores = [Store(store_url.url, schema=store_url.schema) for _ in range(3)]
    try:
        assert race(3, lambda i: stores[i].migrate()) == [len(MIGRATIONS)] * 3
    finally:
        for s in stores:
            s.close()


def test_bad_urls_fail_clearly():
    with pytest.raises(ValueError, match="unsupported database URL"):
        Store("mysql://localhost/db")
    with pytest.raises(ValueError, match="schema"):
        Store("sqlite:///x.db", schema="s")


# ---------------------------------------------------------------------------- flushes


def test_apply_flush_outcomes(make_store):
    store = make_store()
    rows = [row(), row(day="2026-03-02", cost=7)]
    assert store.apply_flush("acme", "f1", 0, rows) is FlushOutcome.APPLIED
    assert store.org_seq("acme") == 1 and store.flush_applied("f1")
    assert store.apply_flush("acme", "f1", 0, rows) is FlushOutcome.ALREADY_APPLIED
    assert store.apply_flush("acme", "f1", 1, rows) is FlushOutcome.ALREADY_APPLIED
    assert store.apply_flush("acme", "f2", 0, rows) is FlushOutcome.CONFLICT
    assert store.apply_flush("acme", "f2", 5, rows) is FlushOutcome.CONFLICT
    assert not store.flush_applied("f2") and store.org_seq("acme") == 1
    assert totals(store) == {("eng", "alice", "gpt", "2026-03-01"): (1, 10, 5, 15, 100),
                             ("eng", "alice", "gpt", "2026-03-02"): (1, 10, 5, 15, 7)}
    assert store.apply_flush("acme", "f2", 1, []) is FlushOutcome.APPLIED
    assert store.org_seq("acme") == 2 and store.org_seq("other") == 0
    assert store.apply_flush("other", "f9", 3, [row(org="other")]) is FlushOutcome.CONFLICT
    assert store.known_orgs() == ["acme"]
    with pytest.raises(ValueError, match="org"):
        store.apply_flush("acme", "f3", 2, [row(org="other")])
    assert store.org_seq("acme") == 2


def test_upsert_adds_and_merges(make_store):
    store = make_store()
    big = 2**53 - 1
    assert store.apply_flush("acme", "a", 0, [row(), row(cost=1), row(user="", team="")]) \
        is FlushOutcome.APPLIED
    assert store.apply_flush("acme", "b", 1, [row(n=2, inp=1, out=1, cost=big - 101)]) \
        is FlushOutcome.APPLIED
    assert store.apply_flush("globex", "c", 0, [row(org="globex")]) is FlushOutcome.APPLIED
    assert totals(store) == {("eng", "alice", "gpt", "2026-03-01"): (4, 21, 11, 32, big),
                             ("", "", "gpt", "2026-03-01"): (1, 10, 5, 15, 100)}
    assert store.usage_rows("acme", "2026-03-02", "2026-03-31") == []
    assert [r.day for r in store.usage_rows("acme", "2026-03-01", "2026-03-01")] == \
        ["2026-03-01", "2026-03-01"]
    assert store.known_orgs() == ["acme", "globex"]


@pytest.mark.parametrize("same_id", [False, True], ids=["distinct-ids", "same-id"])
def test_racing_flushes_apply_once(make_store, same_id):
    n = 4
    stores = [make_store() for _ in range(2)]  # two engines: separate connections
    stores[0].apply_flush("acme", "warmup", 0, [row(cost=1)])

    def flush(i: int) -> FlushOutcome:
        fid = "race" if same_id else f"race-{i}"
        return stores[i % 2].apply_flush("acme", fid, 1, [row(cost=1000), row(day="2026-03-05")])

    outcomes = race(n, flush)
    assert outcomes.count(FlushOutcome.APPLIED) == 1
    loser = FlushOutcome.ALREADY_APPLIED if same_id else FlushOutcome.CONFLICT
    assert outcomes.count(loser) == n - 1
    assert stores[1].org_seq("acme") == 2
    assert totals(stores[1]) == {("eng", "alice", "gpt", "2026-03-01"): (2, 20, 10, 30, 1001),
                                 ("eng", "alice", "gpt", "2026-03-05"): (1, 10, 5, 15, 100)}


# ---------------------------------------------------------------------------- alerts


def test_record_alerts_dedupes_and_fans_out(make_store):
    store = make_store()
    e50, e75 = event(50), event(75, occurred_ms=2_000)
    assert store.record_alerts([e50, e75, e50], ["webhook", "log"], 100) == 2
    assert store.record_alerts([e50, event(90, occurred_ms=3_000)], ["webhook", "log"], 200) == 1
    assert store.record_alerts([], ["log"], 300) == 0
    assert store.backlog() == 6
    ds = store.deliveries("pending")
    assert sorted((d.event.threshold, d.sink) for d in ds) == [
        (50, "log"), (50, "webhook"), (75, "log"), (75, "webhook"), (90, "log"), (90, "webhook")]
    assert all(d.attempts == 0 and d.state == "pending" for d in ds)
    assert {d.event for d in ds} == {e50, e75, event(90, occurred_ms=3_000)}
    assert [e.threshold for e in store.events("acme")] == [90, 75, 50]  # newest first
    assert store.events("globex") == [] and len(store.events(limit=2)) == 2


def test_concurrent_record_alerts(make_store):
    stores = [make_store() for _ in range(2)]
    evs = [event(t, scope=f"org:acme/team:t{i}") for i in range(10) for t in (50, 100)]
    news = race(4, lambda i: stores[i % 2].record_alerts(evs[::-1] if i % 2 else evs,
                                                         ["a", "b"], 5))
    assert sum(news) == 20
    assert stores[0].backlog() == 40 and len(stores[0].events(limit=1000)) == 20


def test_fired_thresholds(make_store):
    store = make_store()
    store.record_alerts([event(50), event(100), event(50, period_id="2026-02"),
                         event(50, org="globex", scope="org:globex")], ["log"], 1)
    fired = store.fired_thresholds("acme", {"2026-03", "2026-04"})
    assert sorted(e.threshold for e in fired) == [50, 100]
    assert all(e.period_id == "2026-03" and e.org == "acme" for e in fired)
    assert store.fired_thresholds("acme", []) == []
    many = [f"p{i}" for i in range(1200)] + ["2026-02"]
    assert [e.period_id for e in store.fired_thresholds("acme", many)] == ["2026-02"]


def test_claim_due_leases(make_store):
    store, other = make_store(), make_store()
    store.record_alerts([event(t, occurred_ms=t) for t in (50, 75, 90)], ["a", "b"], 1_000)
    assert store.claim_due(999, 10, 5_000, "w0") == []  # not due yet
    first = store.claim_due(1_000, 4, 5_000, "w1")
    second = other.claim_due(1_000, 4, 5_000, "w2")
    assert len(first) == 4 and len(second) == 2
    keys = {(d.event.id, d.sink) for d in first} | {(d.event.id, d.sink) for d in second}
    assert len(keys) == 6
    assert store.claim_due(5_999, 10, 5_000, "w3") == []  # leases still held
    again = store.claim_due(6_001, 10, 1_000, "w3")  # leases expired: claimable again
    assert len(again) == 6
    assert other.claim_due(6_500, 10, 1_000, "w4") == []


def test_concurrent_claims_are_disjoint(make_store):
    stores = [make_store() for _ in range(2)]
    stores[0].record_alerts([event(t, scope=f"org:acme/user:u{i}") for i in range(15)
                             for t in (50, 100)], ["a"], 10)
    got = race(4, lambda i: stores[i % 2].claim_due(10, 10, 60_000, f"w{i}"))
    keys = [(d.event.id, d.sink) for batch in got for d in batch]
    assert len(keys) == len(set(keys)) == 30


def test_retry_dead_requeue_delivered(make_store):
    store = make_store()
    e1, e2 = event(50), event(100)
    store.record_alerts([e1, e2], ["hook"], 0)
    assert len(store.claim_due(10, 10, 1_000_000, "w")) == 2
    store.mark_retry(e1.id, "hook", 1, 500, "HTTP 503")
    assert [(d.event.id, d.attempts) for d in store.claim_due(500, 10, 1000, "w2")] == [(e1.id, 1)]
    store.mark_dead(e1.id, "hook", 5, "HTTP 410", 600)
    store.mark_retry(e1.id, "hook", 6, 700, "late")  # a dead delivery stays dead
    dead = store.deliveries("dead")
    assert [(d.event.id, d.attempts, d.last_error) for d in dead] == [(e1.id, 5, "HTTP 410")]
    assert store.backlog() == 1
    store.mark_delivered(e2.id, "hook", 800)
    assert [(d.event.id, d.attempts) for d in store.deliveries("delivered")] == [(e2.id, 1)]
    assert store.backlog() == 0 and store.claim_due(10**7, 10, 10, "w") == []
    assert store.requeue_dead("evt_unknown", 900) == 0
    assert store.requeue_dead(None, 900) == 1
    assert store.requeue_dead(None, 900) == 0
    (d,) = store.deliveries("pending")
    assert (d.event.id, d.attempts, d.next_attempt_ms) == (e1.id, 0, 900)
    assert [x.event.id for x in store.claim_due(900, 10, 10, "w")] == [e1.id]
    assert len(store.deliveries()) == 2 and len(store.deliveries(limit=1)) == 1


# ---------------------------------------------------------------------------- policy, adjustments


def test_policy_versions(make_store):
    store = make_store()
    assert store.policy_in_force() is None
    a = store.record_policy("orgs: {a: {}}", "a.yaml", 1)
    assert a == hashlib.sha256(b"orgs: {a: {}}").hexdigest()
    assert store.policy_in_force() == (a, "a.yaml", "orgs: {a: {}}")
    b = store.record_policy("orgs: {b: {}}", "b.yaml", 2)
    assert store.policy_in_force() == (b, "b.yaml", "orgs: {b: {}}")
    assert store.record_policy("orgs: {a: {}}", "again.yaml", 3) == a
    assert store.policy_in_force() == (a, "a.yaml", "orgs: {a: {}}")
    race(4, lambda i: make_store().record_policy(f"v{i}", "x", 4))
    in_force = store.policy_in_force()
    assert in_force is not None and in_force[2] in {"v0", "v1", "v2", "v3"}


def test_adjustments(make_store):
    store = make_store()
    adj = Adjustment(org="acme", scope="org:acme/team:eng", metric="cost", amount=-500,
                     day="2026-03-02", who="ops", why="refund", at_ms=10)
    generated = store.add_adjustment(adj)
    assert generated.startswith("adj_")
    fixed = Adjustment(org="acme", scope="org:acme", metric="invocations", amount=3,
                       day="2026-03-01", who="ops", why="", at_ms=20, id="adj-1")
    assert store.add_adjustment(fixed) == "adj-1"
    assert store.add_adjustment(fixed) == "adj-1"  # idempotent by id
    assert store.adjustments("acme", "2026-03-01", "2026-03-31") == [
        fixed, Adjustment(org="acme", scope="org:acme/team:eng", metric="cost", amount=-500,
                          day="2026-03-02", who="ops", why="refund", at_ms=10, id=generated)]
    assert [a.id for a in store.adjustments("acme", "2026-03-02", "2026-03-02")] == [generated]
    assert store.adjustments("globex", "2026-01-01", "2026-12-31") == []
