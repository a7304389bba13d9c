"""Usage extractors against recorded provider payloads, request estimates, the pricing table."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetlimiter import BudgetLimiter, Subject, UnknownAgent, Usage, parse_policy
from budgetlimiter.estimate import (
    IMAGE_TOKENS,
    char_tokens,
    estimate_anthropic,
    estimate_openai,
    estimate_openai_chat,
    estimate_openai_responses,
    utf8_bytes,
)
from budgetlimiter.extract import ProviderUsage, extract_usage, field_extractor
from budgetlimiter.guard import Guard
from budgetlimiter.policy.model import Pricing
from budgetlimiter.policy.pricing import lookup_pricing, shipped_pricing

from .payloadlib import as_object, load

# name -> (input, output, cached, cache_write, reasoning), read off the payload by hand
EXPECTED = {
    "openai_chat_completion": (1117, 46, 1024, 0, 0),
    "openai_chat_reasoning": (86, 1235, 0, 0, 1216),
    "openai_responses": (1328, 612, 1152, 0, 448),
    "anthropic_message": (21 + 188 + 1840, 393, 1840, 188, 0),
}


@pytest.mark.parametrize("shape", ["dict", "object"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_extractors_read_recorded_payloads(name, shape):
    payload = load(name)
    usage = extract_usage(payload if shape == "dict" else as_object(payload))
    inp, out, cached, write, reasoning = EXPECTED[name]
    assert (usage.input_tokens, usage.output_tokens, usage.invocations) == (inp, out, 1)
    assert getattr(usage, "cached_input_tokens", 0) == cached
    assert getattr(usage, "cache_write_tokens", 0) == write
    assert getattr(usage, "reasoning_tokens", 0) == reasoning
    assert usage.cost is None


def test_stream_final_events_carry_usage():
    completed = load("openai_responses_stream")[-1]
    assert completed["type"] == "response.completed"
    assert extract_usage(completed).input_tokens == 731
    assert extract_usage(as_object(load("openai_chat_stream")[-1])).output_tokens == 9


def test_plain_usage_without_details_is_a_plain_usage():
    assert extract_usage({"usage": {"prompt_tokens": 40, "completion_tokens": 30}}) == Usage(40, 30)
    assert extract_usage({"usage": {"input_tokens": 5, "output_tokens": 7}}) == Usage(5, 7)
    assert extract_usage(Usage(1, 2)) == Usage(1, 2)
    for nothing in (None, "text", 42, {"choices": []}, {"usage": None}, object()):
        assert extract_usage(nothing) is None


def test_custom_agent_dict_object_and_field_extractor():
    assert extract_usage(load("custom_agent")) == Usage(5200, 800, cost=Decimal("0.35"))
    assert extract_usage(as_object({"input_tokens": 3, "invocations": 2})) == Usage(3, 0, 2)
    pick = field_extractor(input="stats.tokens_in", output="stats.tokens_out", cost="bill.usd")
    assert pick({"stats": {"tokens_in": 10, "tokens_out": 4}}) == Usage(10, 4)
    assert pick(as_object({"stats": {"tokens_in": 1}, "bill": {"usd": "0.5"}})) == Usage(
        1, 0, cost=Decimal("0.5"))
    assert pick({"other": 1}) is None
    with pytest.raises(ValueError, match="float"):
        extract_usage({"input_tokens": 1, "cost": 0.1})  # money is never a float


def test_cached_tokens_are_priced_at_the_cached_rate():
    gpt4o = lookup_pricing("gpt-4o")
    usage = extract_usage(load("openai_chat_completion"))
    assert isinstance(usage, ProviderUsage)
    # (1117 - 1024) * 2.50 + 1024 * 1.25 + 46 * 10.00 micro-USD
    assert gpt4o.cost_micros(usage) == 1973  # 93 * 2.50 + 1024 * 1.25 + 46 * 10 = 1972.5, up
    no_cache_rate = Pricing(input_per_million=Decimal("2.5"), output_per_million=Decimal(10))
    assert no_cache_rate.cost_micros(usage) == 3253  # 1117 * 2.50 + 460 = 3252.5, up
    with pytest.raises(ValueError, match="exceed"):
        ProviderUsage(10, 0, cached_input_tokens=11)


def test_guard_commits_extracted_usage_and_calls_the_billing_hook():
    policy = parse_policy("orgs: {acme: {limits: [{metric: cost, amount: '1', period: day}]}}")
    billed = []
    with BudgetLimiter(policy, "memory://extract-hook") as limiter:
        subject = Subject("acme", "gpt-4o-2024-08-06", team="eng")

        @Guard(limiter, subject, Usage(2000, 100), on_commit=billed.append)
        def call():
            return load("openai_chat_completion")

        call()
    assert [(b.subject, b.cost_usd, b.result.status) for b in billed] == [
        (subject, Decimal("0.001973"), "committed")]


# ------------------------------------------------------------------ estimates


CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},  # 14 chars -> 4 tokens
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},  # 22 -> 6
            {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
        ]},
    ],
    "max_completion_tokens": 300,
    "n": 2,
}


def test_estimate_openai_chat_is_chars_over_four_plus_overheads():
    est = estimate_openai_chat(CHAT)
    assert est == Usage(input_tokens=4 + 6 + IMAGE_TOKENS + 2 * 4, output_tokens=600)
    assert estimate_openai(CHAT) == est
    assert estimate_openai_chat({"messages": [], "max_tokens": 7}).output_tokens == 7
    assert estimate_openai_chat({"messages": []}, default_output=99).output_tokens == 99
    words = estimate_openai_chat(CHAT, tokenizer=lambda s: len(s.split()), per_message=0)
    assert words.input_tokens == 3 + 5 + IMAGE_TOKENS
    with pytest.raises(ValueError, match="max_tokens"):
        estimate_openai_chat({"messages": [], "max_tokens": -1})


def test_estimate_openai_responses_and_anthropic():
    req = {"model": "o4-mini", "instructions": "Be brief.", "input": "Capital of France?",
           "max_output_tokens": 2048}
    assert estimate_openai(req) == Usage(input_tokens=3 + 5, output_tokens=2048)
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
                       {"type": "function_call_output", "call_id": "c1", "output": "12345678"}]}
    assert estimate_openai_responses(items).input_tokens == 4 + 1 + 4 + 2
    anthropic = {"model": "claude-sonnet-4", "max_tokens": 1024,
                 "system": [{"type": "text", "text": "You review contracts."}],  # 21 -> 6
                 "messages": [{"role": "user", "content": "Summarise clause 4."},  # 19 -> 5
                              {"role": "assistant", "content": [
                                  {"type": "tool_use", "id": "t1", "name": "read",  # 4 -> 1
                                   "input": {"clause": 4}}]},  # {"clause":4} 12 -> 3
                              {"role": "user", "content": [
                                  {"type": "tool_result", "tool_use_id": "t1",
                                   "content": [{"type": "text", "text": "Term: 2y"}]}]}]}  # 2
    assert estimate_anthropic(anthropic) == Usage(6 + 5 + 1 + 3 + 2 + 3 * 4, 1024)


def test_estimate_is_an_upper_bound_of_the_recorded_usage_with_utf8_bytes():
    text = "日本語のテキスト" * 10
    assert char_tokens(text) < len(text) < utf8_bytes(text)
    est = estimate_openai_chat({"messages": [{"role": "user", "content": text}]},
                               tokenizer=utf8_bytes)
    assert est.input_tokens == len(text.encode()) + 4


# ------------------------------------------------------------------ pricing table


def test_shipped_table_is_consulted_between_policy_pricing_and_default_pricing():
    table = shipped_pricing()
    assert {"gpt-4o", "claude-sonnet-4", "gemini-2.5-pro"} <= set(table)
    assert all(p.input_per_million or p.per_invocation for p in table.values())
    policy = parse_policy("""
pricing: {gpt-4o: {input_per_million: "1", output_per_million: "2"}}
default_pricing: {input_per_million: "99"}
""")
    assert policy.pricing_for("gpt-4o").input_per_million == 1  # the policy wins
    assert policy.pricing_for("gpt-4o-mini") == table["gpt-4o-mini"]  # then the table
    assert policy.pricing_for("claude-sonnet-4-20250514") == table["claude-sonnet-4"]
    assert policy.pricing_for("gpt-4o-2024-08-06") == table["gpt-4o"]
    assert policy.pricing_for("chatgpt-4o-latest") == table["gpt-4o"]  # alias
    assert policy.pricing_for("in-house-agent").input_per_million == 99  # then the default
    bare = parse_policy("pricing: {}")
    with pytest.raises(UnknownAgent, match=r"'in-house-agent'.*pricing table.*default_pricing"):
        bare.pricing_for("in-house-agent")
    assert table["github-copilot-premium-request"].per_invocation == Decimal("0.04")
