"""The engine's flows without any Redis: fed replies by hand, as the clients feed them."""

from __future__ import annotations

import pytest
from redis.exceptions import NoScriptError

from budgetlimiter import Subject, Usage, parse_policy
from budgetlimiter.engine.calls import LoadScript, ScriptCall
from budgetlimiter.engine.engine import Engine

from .policies import BASIC

NOW = 1_773_144_000_000  # 2026-03-10 12:00 UTC
ALICE = Subject("acme", "gpt", team="eng", user="alice")


def engine(text: str = BASIC, **kwargs) -> Engine:
    return Engine(parse_policy(text), cluster=False, clock=lambda: NOW, clock_tolerance=None,
                  **kwargs)


def finish(flow, reply):
    with pytest.raises(StopIteration) as stop:
        flow.send(reply)
    return stop.value.value


def admitted_reply(call: ScriptCall) -> list[int]:
    nb, nr = int(call.args[6]), int(call.args[7])
    return [1, 0, 0] + [-1, 1, 0] * nb + [0] * nr


def test_a_check_is_one_script_call_whatever_the_depth():
    flow = engine().check(ALICE, Usage(input_tokens=1))
    call = next(flow)
    assert isinstance(call, ScriptCall) and call.script == "check"
    decision = finish(flow, admitted_reply(call))
    assert decision.allowed and decision.subject == ALICE and decision.reservation is not None


def test_an_outage_thrown_into_a_check_is_answered_by_the_outage_policy():
    flow = engine().check(ALICE, Usage(input_tokens=1))
    next(flow)
    with pytest.raises(StopIteration) as stop:
        flow.throw(ConnectionError("refused"))
    decision = stop.value.value
    assert not decision.allowed and decision.degraded
    assert decision.reason == "backend_unavailable"


def test_a_missing_script_is_loaded_and_the_call_sent_again():
    flow = engine().check(ALICE, Usage(input_tokens=1))
    call = next(flow)
    assert flow.throw(NoScriptError("NOSCRIPT")) == LoadScript("check")
    assert flow.send("sha") is call
    assert finish(flow, admitted_reply(call)).allowed


def test_a_clock_off_redis_is_corrected_and_the_call_planned_again():
    eng = Engine(parse_policy(BASIC), cluster=False, clock=lambda: NOW, clock_tolerance=1.0)
    flow = eng.check(ALICE, Usage(input_tokens=1))
    first = next(flow)
    assert first.args[8] == 1000  # the tolerance travels with the call
    again = flow.send([-2, NOW + 600_000])
    assert isinstance(again, ScriptCall) and int(again.args[0]) == NOW + 600_000
    assert eng.clock_offset_ms == 600_000
    assert finish(flow, admitted_reply(again)).allowed


def test_a_commit_outage_is_queued_and_replayed_by_the_next_round_trip():
    eng = engine()
    flow = eng.check(ALICE, Usage(input_tokens=1))
    decision = finish(flow, admitted_reply(next(flow)))
    commit = eng.commit(decision.reservation, Usage(input_tokens=1))
    next(commit)
    with pytest.raises(StopIteration) as stop:
        commit.throw(ConnectionError("down"))
    assert stop.value.value.status == "local" and eng.queued == 1
    replay = eng.replay()
    call = next(replay)
    assert call.script == "settle" and call.args[1] == "commit"
    assert finish(replay, [1, 0, 0]) == 1
    assert eng.queued == 0
