"""Runtime limit overrides: stored as versions in SQL, published through Redis, audited."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from budgetlimiter import Subject, Usage
from budgetlimiter.durable.limits import (
    clear_override,
    publish_call,
    rollback,
    set_override,
    unset_limit,
)
from budgetlimiter.durable.store.admin import (
    audit_entries,
    latest_overrides,
    override_versions,
)
from budgetlimiter.errors import InvalidInput, NothingToRemove, PolicyError, PreconditionFailed
from budgetlimiter.policy import parse_policy
from budgetlimiter.policy.overrides import LimitKey, parse_override
from budgetlimiter.subject import Scope

POLICY = """
pricing: {gpt: {per_invocation: "1"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "1000", period: month}]
    teams:
      eng:
        limits: [{metric: cost, amount: "5", period: day}]
  other: {}
"""
ENG = Scope("acme", "eng")
ALICE = Subject("acme", "gpt", team="eng", user="alice")


def _override(amount: str) -> Any:
    return parse_override({"limits": [{"metric": "cost", "amount": amount, "period": "day"}]})


def _apply(limiter: Any, change: Any) -> None:
    """What a writer does after SQL: publish, and apply in its own process."""
    limiter.execute(publish_call(limiter.keys, change.overrides))
    limiter.engine.apply_overrides(change.overrides)


def test_lowering_below_usage_blocks_and_raising_admits_from_the_next_check(
        make_limiter, make_store):
    store = make_store()
    bl = make_limiter(POLICY)
    for _ in range(3):
        d = bl.check(ALICE)
        bl.commit(d.reservation, Usage())
    _apply(bl, set_override(store, bl.policy, ENG, _override("2"), who="ops", why="cut"))
    blocked = bl.check(ALICE)
    assert not blocked.allowed and blocked.blocked_by.scope == ENG
    used = {(s.metric.value, s.period): s.used for s in bl.scope_status(ENG)}
    assert used[("cost", "day")] == 3_000_000  # micro-USD: the recorded usage is untouched
    _apply(bl, set_override(store, bl.policy, ENG, _override("10"), who="ops", why="raise"))
    assert bl.check(ALICE).allowed


def test_a_second_client_applies_a_published_change_when_it_polls(make_limiter, make_store):
    store = make_store()
    writer, reader = make_limiter(POLICY), make_limiter(POLICY)
    assert reader.check(ALICE, dry_run=True).allowed
    _apply(writer, set_override(store, writer.policy, ENG, _override("0"), who="ops", why="x"))
    reader.run(reader.engine.poll_overrides())  # (its timer does this every second)
    assert not reader.check(ALICE, dry_run=True).allowed
    eff = reader.policy.resolve(ALICE).to_dict()
    eng = next(s for s in eff["scopes"] if s["scope"] == str(ENG))
    assert eng["limits"][0]["origin"] == "override v1.limits[0]"


def test_a_client_starting_later_applies_the_overrides_before_its_first_check(
        make_limiter, make_store):
    store = make_store()
    writer = make_limiter(POLICY)
    _apply(writer, set_override(store, writer.policy, ENG, _override("0"), who="ops", why="x"))
    assert not make_limiter(POLICY).check(ALICE).allowed


@pytest.mark.parametrize(("body", "message"), [
    ({"limits": [{"metric": "cost", "amount": "-5", "period": "day"}]},
     "limits[0].amount: must not be negative (got '-5')"),
    ({"limits": [{"metric": "cost", "amount": "5", "period": "fortnight"}]},
     "limits[0].period: "),
    ({"rates": [{"metric": "requests", "limit": 0, "per": "second"}]}, "rates[0].limit: "),
    ({"limitz": []}, "limitz: unknown field"),
])
def test_an_invalid_override_is_refused_with_the_policy_loaders_message(body, message):
    with pytest.raises(PolicyError) as err:
        parse_override(body)
    assert str(err.value).startswith(message)


def test_bad_changes_store_nothing(make_store):
    store = make_store()
    policy = parse_policy(POLICY)
    with pytest.raises(InvalidInput, match="org 'acem' is not declared"):
        set_override(store, policy, Scope("acem"), _override("1"), who="ops", why="x")
    with pytest.raises(NothingToRemove, match="no invocations per day limit"):
        unset_limit(store, policy, ENG, LimitKey(metric="invocations", period="day"),
                    who="ops", why="x")
    with pytest.raises(NothingToRemove, match="has no override"):
        clear_override(store, policy, ENG, who="ops", why="x")
    with pytest.raises(InvalidInput, match="why"):
        set_override(store, policy, ENG, _override("1"), who="ops", why=" ")
    assert override_versions(store) == [] and audit_entries(store) == []


def test_a_change_with_a_stale_etag_is_refused_and_changes_nothing(make_store):
    store, policy = make_store(), parse_policy(POLICY)
    etag = latest_overrides(store).etag(ENG)
    set_override(store, policy, ENG, _override("1"), who="a", why="x", if_match=etag)
    with pytest.raises(PreconditionFailed):
        set_override(store, policy, ENG, _override("2"), who="b", why="y", if_match=etag)
    # a removal of the override does not bring the old ETag back (no ABA)
    clear_override(store, policy, ENG, who="a", why="back to the file")
    assert latest_overrides(store).etag(ENG) == '"2"' != etag
    assert [v.version for v in override_versions(store)] == [2, 1]


def test_unsetting_a_file_limit_takes_it_out_of_force_and_rollback_restores_it(make_store):
    store, policy = make_store(), parse_policy(POLICY)
    change = unset_limit(store, policy, ENG, LimitKey(metric="cost", period="day"),
                         who="ops", why="no daily cap this week")
    assert change.entry.before == ["cost 5 per day hard (orgs.acme.teams.eng.limits[0])"]
    assert change.entry.after == []
    back = rollback(store, policy, 0, who="ops", why="undo")
    assert back.overrides.version == 2 and back.overrides.get(ENG) is None
    entries = audit_entries(store, org="acme")
    assert [(e.action, e.who, e.version) for e in entries] == [
        ("override.unset", "ops", 1), ("policy.rollback", "ops", 2)]
    assert entries[1].after == {str(ENG): ["cost 5 per day hard "
                                           "(orgs.acme.teams.eng.limits[0])"]}


def test_the_audit_log_refuses_updates_and_deletes(make_store):
    store = make_store()
    set_override(store, parse_policy(POLICY), ENG, _override("1"), who="ops", why="x")
    for sql in ("UPDATE bl_audit SET who = 'mallory'", "DELETE FROM bl_audit"):
        with pytest.raises(Exception, match="append-only"), store.writing("overrides") as c:
            c.execute(text(sql))
    assert [e.who for e in audit_entries(store)] == ["ops"]


def test_a_policy_file_reload_keeps_the_overrides_in_force(make_limiter, make_store):
    store = make_store()
    bl = make_limiter(POLICY)
    _apply(bl, set_override(store, bl.policy, ENG, _override("0"), who="ops", why="x"))
    bl.set_policy(parse_policy(POLICY))  # what SIGHUP does
    assert not bl.check(ALICE, dry_run=True).allowed
    assert bl.policy.overrides is not None and bl.policy.overrides.version == 1


def test_a_running_client_applies_a_published_change_by_itself(make_limiter, make_store):
    import time

    store = make_store()
    writer, reader = make_limiter(POLICY), make_limiter(POLICY)
    assert reader.check(ALICE, dry_run=True).allowed  # (its timer runs from its first call)
    _apply(writer, set_override(store, writer.policy, ENG, _override("0"), who="ops", why="x"))
    deadline = time.monotonic() + 20  # generous: the promise (2 s) is shown end to end
    while reader.check(ALICE, dry_run=True).allowed:
        assert time.monotonic() < deadline, "the reader never applied the change"
        time.sleep(0.05)


def test_an_adjustment_is_audited_with_its_row(make_limiter, make_store):
    from budgetlimiter.durable.adjust import apply_adjustment
    from budgetlimiter.usage import Metric

    store, bl = make_store(), make_limiter(POLICY)
    apply_adjustment(bl, store, ENG, Metric.COST, 2_000_000, "ops", "support contract",
                     adjustment_id="adj-1")
    apply_adjustment(bl, store, ENG, Metric.COST, 2_000_000, "ops", "support contract",
                     adjustment_id="adj-1")  # a retry: one row, one entry
    (entry,) = audit_entries(store, org="acme")
    assert (entry.action, entry.who, entry.scope, entry.why) == (
        "adjustment", "ops", str(ENG), "support contract")
    assert entry.before == ["cost requested 2.000000"]
    assert entry.after[0].startswith("cost applied 2.000000 on ")


def test_an_unreadable_published_set_never_fails_a_check(make_limiter, raw_redis):
    bl = make_limiter(POLICY)
    keys = bl.keys
    raw_redis.set(keys.overrides_version, "7")
    raw_redis.set(keys.overrides_doc, "{not json")
    assert bl.check(ALICE, dry_run=True).allowed  # the file's limits, as before
    assert bl.policy.overrides is None


def test_publishing_never_moves_the_version_back(make_limiter, raw_redis):
    from budgetlimiter.policy.overrides import OverrideSet

    bl = make_limiter(POLICY)
    newer = OverrideSet().with_scope(ENG, _override("1"), 2)
    older = OverrideSet().with_scope(ENG, _override("9"), 1)
    assert bl.execute(publish_call(bl.keys, newer)) == (True, 2)
    assert bl.execute(publish_call(bl.keys, older)) == (False, 2)  # a racing older publisher
    assert bl.execute(publish_call(bl.keys, newer)) == (False, 2)  # and a repeat
    assert OverrideSet.from_json(raw_redis.get(bl.keys.overrides_doc)) == newer
