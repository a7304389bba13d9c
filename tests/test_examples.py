"""The examples run as shipped; the OpenAI-compatible proxy end to end against a real Redis
and a fake upstream (uvicorn on 127.0.0.1 replaying the recorded payloads)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from budgetlimiter import AsyncBudgetLimiter, SettleResult, Subject, Usage, parse_policy
from budgetlimiter.estimate import estimate_openai_chat
from budgetlimiter.guard import Committed
from budgetlimiter.policy.pricing import lookup_pricing
from budgetlimiter.server.testing import LiveServer
from budgetlimiter.usage import Amounts

from .payloadlib import load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_agent_service_example_stops_at_the_team_budget(capsys):
    service = example("agent_service").main()
    out = capsys.readouterr().out
    assert service.service.calls == 5
    assert "call 6 denied" in out and "org:acme/team:legal" in out
    assert "team spent 0.265180 USD" in out


def test_billing_callback_example_bills_each_commit_once(capsys):
    ledger = example("billing_callback").main()
    # gpt-4o 1200 * 2.50 + 300 * 10.00; claude-sonnet-4 900 * 3 + 250 * 15 (micro-USD)
    assert ledger.invoice() == {"eng": Decimal("0.006"), "ops": Decimal("0.00645")}
    assert capsys.readouterr().out.splitlines() == ["eng: 0.006000 USD", "ops: 0.006450 USD"]
    entry_id = next(iter(ledger.entries))
    again = Committed(Subject("acme", "gpt-4o", team="eng"), Usage(1),
                      SettleResult("committed", entry_id, Amounts(cost=6000)))
    ledger(again)  # a retried delivery
    assert ledger.invoice()["eng"] == Decimal("0.006")


# ------------------------------------------------------------------ the proxy


POLICY = """
orgs:
  acme:
    teams:
      eng:
        limits:
          - {metric: cost, amount: "0.02", period: day}
          - {metric: input_tokens, amount: 10000000, period: day, mode: soft}
          - {metric: output_tokens, amount: 10000000, period: day, mode: soft}
      ops:
        limits: [{metric: cost, amount: "1", period: day}]
"""
ALICE = {"Authorization": "Bearer sk-acme-eng-alice"}
CHAT = {"model": "gpt-4o", "max_completion_tokens": 200,
        "messages": [{"role": "system", "content": "Summarise the quarterly report."},
                     {"role": "user", "content": "Revenue, costs, drivers. " * 20}]}
RESPONSES = {"model": "o4-mini", "input": "Capital of France?", "max_output_tokens": 1000}


def exact_cost(model: str, usage: dict) -> int:
    """Micro-USD of one upstream usage, from the payload's tokens and the table's prices."""
    price = lookup_pricing(model)
    if "prompt_tokens" in usage:
        inp, out = usage["prompt_tokens"], usage["completion_tokens"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
    else:
        inp, out = usage["input_tokens"], usage["output_tokens"]
        cached = usage["input_tokens_details"]["cached_tokens"]
    micros = ((inp - cached) * price.input_per_million + cached * price.cached_input_per_million
              + out * price.output_per_million)
    return int(micros.to_integral_value(rounding=ROUND_CEILING))


def estimated_cost(model: str, est) -> int:
    price = lookup_pricing(model)
    micros = est.input_tokens * price.input_per_million + est.output_tokens * \
        price.output_per_million
    return int(micros.to_integral_value(rounding=ROUND_CEILING))


@pytest.fixture
def upstream():
    app = example("fake_upstream").create_upstream()
    with LiveServer(app) as server:
        yield server


def test_proxy_enforces_team_budget_and_counts_exactly_what_upstream_reported(
        fresh_redis, clock, upstream):
    proxy_module = example("openai_proxy")
    chat_cost = exact_cost("gpt-4o", load("openai_chat_completion")["usage"])
    stream_cost = exact_cost("gpt-4o", load("openai_chat_stream")[-1]["usage"])
    responses_cost = exact_cost("o4-mini", load("openai_responses")["usage"])
    chat_estimate = estimated_cost("gpt-4o", estimate_openai_chat(CHAT))
    limit = 20_000
    # expected: one stream, one Responses call, then chat calls while the estimate fits
    spent, chats = stream_cost + responses_cost, 0
    while spent + chat_estimate <= limit:
        spent, chats = spent + chat_cost, chats + 1
    assert chats >= 3  # the scenario is meaningful

    async def scenario() -> None:
        limiter = AsyncBudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock,
                                     timeout=2)
        async with httpx.AsyncClient(base_url=upstream.url) as http, \
                httpx.AsyncClient(base_url="http://proxy", transport=httpx.ASGITransport(
                    app=proxy_module.create_app(limiter, upstream.url, http=http))) as client:
            r = await client.post("/v1/chat/completions", headers=ALICE,
                                  json={**CHAT, "stream": True})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
            events = [json.loads(line[6:]) for line in r.text.splitlines()
                      if line.startswith("data: {")]
            assert events == load("openai_chat_stream")  # relayed unchanged, usage included
            r = await client.post("/v1/responses", headers=ALICE, json=RESPONSES)
            assert r.json() == load("openai_responses")
            for _ in range(chats):
                r = await client.post("/v1/chat/completions", headers=ALICE, json=CHAT)
                assert r.status_code == 200, r.text
            forwarded = len(upstream.app.state.requests)

            r = await client.post("/v1/chat/completions", headers=ALICE, json=CHAT)
            assert r.status_code == 429
            err = r.json()["error"]
            assert err["type"] == "budget_exceeded" and err["scope"] == "org:acme/team:eng"
            assert err["limit"]["metric"] == "cost" and err["limit"]["period"] == "day"
            assert Decimal(err["limit"]["limit"]) == Decimal("0.02")
            assert Decimal(err["limit"]["used"]) == Decimal(spent).scaleb(-6)
            assert Decimal(err["limit"]["requested"]) == Decimal(chat_estimate).scaleb(-6)
            assert "requested" in err["message"]
            assert err["retry_after"] > 0 and int(r.headers["Retry-After"]) >= 1
            assert "org:acme/team:eng" in err["message"]
            assert len(upstream.app.state.requests) == forwarded  # never forwarded

            # another team is not affected; unknown keys and unpriced models are refused
            r = await client.post("/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": "Bearer sk-acme-ops-carol"})
            assert r.status_code == 200
            r = await client.post("/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": "Bearer sk-nobody"})
            assert r.status_code == 401
            r = await client.post("/v1/chat/completions", headers=ALICE,
                                  json={**CHAT, "model": "no-such-model"})
            assert r.status_code == 400 and "no pricing" in r.json()["error"]["message"]

            team = {s.metric.value: s for s in await limiter.scope_status("org:acme/team:eng")}
        await limiter.aclose()
        # the team's counters are exactly the upstream's reported usage, priced
        assert (team["cost"].used, team["cost"].reserved) == (spent, 0)
        chat_usage = load("openai_chat_completion")["usage"]
        stream_usage = load("openai_chat_stream")[-1]["usage"]
        resp_usage = load("openai_responses")["usage"]
        assert team["input_tokens"].used == (stream_usage["prompt_tokens"]
                                             + resp_usage["input_tokens"]
                                             + chats * chat_usage["prompt_tokens"])
        assert team["output_tokens"].used == (stream_usage["completion_tokens"]
                                              + resp_usage["output_tokens"]
                                              + chats * chat_usage["completion_tokens"])
        assert upstream.app.state.requests[0]["stream_options"] == {"include_usage": True}

    asyncio.run(scenario())


def test_proxy_counts_streams_without_usage_and_releases_upstream_errors(
        fresh_redis, clock, upstream):
    proxy_module = example("openai_proxy")

    async def scenario() -> None:
        limiter = AsyncBudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock,
                                     timeout=2)
        async with httpx.AsyncClient(base_url=upstream.url) as http, \
                httpx.AsyncClient(base_url="http://proxy", transport=httpx.ASGITransport(
                    app=proxy_module.create_app(limiter, upstream.url, http=http))) as client:
            r = await client.post("/v1/responses", headers=ALICE,
                                  json={**RESPONSES, "stream": True})
            assert r.status_code == 200 and "response.completed" in r.text
            async with httpx.AsyncClient(base_url=upstream.url + "/nowhere") as http404, \
                    httpx.AsyncClient(base_url="http://proxy", transport=httpx.ASGITransport(
                        app=proxy_module.create_app(limiter, "", http=http404))) as bad:
                for stream in (False, True):
                    r = await bad.post("/v1/responses", headers=ALICE,
                                       json={**RESPONSES, "stream": stream})
                    assert r.status_code == 404  # the upstream's answer, passed through
            team = {s.metric.value: s for s in await limiter.scope_status("org:acme/team:eng")}
        await limiter.aclose()
        usage = load("openai_responses_stream")[-1]["response"]["usage"]
        # the request's model (o4-mini) is the agent that is priced
        assert (team["cost"].used, team["cost"].reserved) == (exact_cost("o4-mini", usage), 0)
        assert team["input_tokens"].used == usage["input_tokens"]

    asyncio.run(scenario())


def sse_events(text: str) -> list[dict]:
    """The JSON ``data:`` payloads of an SSE body, as an OpenAI SDK reads them."""
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line[6:].strip() != "[DONE]"]


def test_proxy_ends_a_stream_the_upstream_broke_with_an_error_event_and_bills_it(
        fresh_redis, clock, upstream, caplog):
    """The upstream drops the connection after 3 events: the client's stream ends with an
    error event the OpenAI SDK raises as APIError, what was streamed is committed (the
    estimate's input, the output counted from the streamed text), and the proxy logs one
    line, not a traceback."""
    from budgetlimiter.streaming import StreamUsage

    proxy_module = example("openai_proxy")
    body = {**CHAT, "stream": True, "metadata": {"fake_upstream": "reset_after=3"}}
    streamed = load("openai_chat_stream")[:3]
    expected = StreamUsage(estimate_openai_chat(body))
    for event in streamed:
        expected.feed_event(event)
    usage = expected.usage(completed=False)

    async def scenario() -> None:
        limiter = AsyncBudgetLimiter(parse_policy(POLICY), fresh_redis.url, clock=clock,
                                     timeout=2)
        async with httpx.AsyncClient(base_url=upstream.url) as http, \
                httpx.AsyncClient(base_url="http://proxy", transport=httpx.ASGITransport(
                    app=proxy_module.create_app(limiter, upstream.url, http=http))) as client:
            with caplog.at_level("INFO"):
                r = await client.post("/v1/chat/completions", headers=ALICE, json=body)
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream")
            events = sse_events(r.text)
            assert events[:3] == streamed  # relayed unchanged up to the break
            error = events[-1]["error"]  # the SDK: data.get("error") -> APIError(message)
            assert len(events) == 4 and isinstance(error, dict)
            assert isinstance(error["message"], str) and "lost" in error["message"]
            assert error["code"] == "upstream_stream_interrupted"
            assert r.text.endswith("\n\n") and "[DONE]" not in r.text
            team = {s.metric.value: s for s in await limiter.scope_status("org:acme/team:eng")}
        await limiter.aclose()
        assert (team["input_tokens"].used, team["output_tokens"].used) == (
            usage.input_tokens, usage.output_tokens)
        assert usage.output_tokens > 0 and team["cost"].reserved == 0
        assert team["cost"].used == estimated_cost("gpt-4o", usage)

    asyncio.run(scenario())
    proxy_lines = [r for r in caplog.records if r.name == "budgetlimiter.examples.openai_proxy"]
    assert len(proxy_lines) == 1 and proxy_lines[0].levelname == "WARNING"
    assert proxy_lines[0].exc_info is None
    assert "broke after" in proxy_lines[0].getMessage()
    assert "billed 0.00" in proxy_lines[0].getMessage()
    tracebacks = [r for r in caplog.records if r.exc_info and "proxy" in r.name]
    assert not tracebacks
