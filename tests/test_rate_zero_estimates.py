"""A check whose estimate for a rate limit's metric is zero (no tokens yet, against a token
rate): it takes nothing from the rate, so it is never refused by it and writes nothing to it
(lua/check.lua: ``est > 0`` in read_rates, ``~= '0'`` in finish)."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

S = Subject("acme", "gpt")


def token_rate(burst: int) -> str:
    return f"""
timezone: UTC
pricing:
  gpt: {{input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    rates:
      - {{metric: total_tokens, limit: 100, per: minute, burst: {burst}}}
"""


def test_a_zero_token_check_passes_a_token_rate_left_over_full_by_a_smaller_burst(
        make_limiter):
    """100 tokens a minute (interval 0.6 s): with burst 100 a check of 100 tokens moves the
    rate's arrival time 60 s ahead. A policy with burst 50 (30 s of tolerance) then finds
    it 30 s beyond: a check of 1 token is refused, a check of 0 tokens is not."""
    before = make_limiter(token_rate(100))
    assert before.check(S, Usage(input_tokens=100)).allowed
    after = make_limiter(token_rate(50))
    refused = after.check(S, Usage(input_tokens=1))
    assert not refused.allowed and refused.reason == "rate_exceeded"
    assert after.check(S, Usage()).allowed


def test_a_zero_token_check_writes_no_token_rate_key(make_limiter, raw_redis):
    bl = make_limiter(token_rate(100))
    assert bl.check(S, Usage()).allowed
    assert list(raw_redis.scan_iter("*:g:*")) == []
    assert bl.check(S, Usage(input_tokens=1)).allowed  # a token does write it
    assert len(list(raw_redis.scan_iter("*:g:*"))) == 1
