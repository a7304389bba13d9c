"""Policies shared by the tests. Prices are chosen so that cost is easy to compute by hand:
model ``gpt`` costs 1 micro-USD per input token and 2 per output token."""

BASIC = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
  copilot: {per_invocation: "0.04"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "10", period: month}
    teams:
      eng:
        limits:
          - {metric: cost, amount: "0.001", period: day}
        defaults:
          user:
            limits:
              - {metric: cost, amount: "0.005", period: day}
      ops:
        limits:
          - {metric: invocations, amount: 3, period: day}
          - {metric: total_tokens, amount: 1000, period: hour, mode: soft}
"""

RATES = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    rates:
      - {metric: invocations, limit: 5, per: second}
    agents:
      gpt:
        rates:
          - {metric: total_tokens, limit: 600, per: minute}
"""

ROLLOVER = """
timezone: Europe/Berlin
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, rollover: accumulate, rollover_cap: 5}
"""

#: budgets and an org-wide rate limit on one subject (tests/test_held_counter.py)
BUDGETS_AND_RATE = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "10", period: month}
      - {metric: total_tokens, amount: 100, period: day}
    rates:
      - {metric: invocations, limit: 2, per: minute}
"""

THRESHOLDS = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 10, period: day, thresholds: [50, 90, 100]}
"""

DEFAULTS_ONLY = """
timezone: UTC
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
defaults:
  org:
    limits: [{metric: cost, amount: "1", period: month}]
    agents:
      gpt:
        limits: [{metric: invocations, amount: 1000, period: day}]
  team:
    limits: [{metric: cost, amount: "0.5", period: day}]
  user:
    limits: [{metric: total_tokens, amount: 100000, period: day}]
    rates: [{metric: invocations, limit: 10, per: second}]
"""

LEASES = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: invocations, amount: 25, period: day}
      - {metric: cost, amount: "10", period: month}
"""

#: RATES without the agent-level rate: one org-wide invocation rate
RATE_ONLY = RATES.split("    agents:")[0]
