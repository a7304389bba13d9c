"""Policy models, loading, validation errors, pricing and inheritance (pure, no Redis)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from budgetlimiter.errors import PolicyError, UnknownAgent
from budgetlimiter.policy import (
    LimitSpec,
    Mode,
    Policy,
    Pricing,
    RateSpec,
    Rollover,
    load_policy,
    parse_policy,
)
from budgetlimiter.policy.periods import PeriodKind
from budgetlimiter.subject import Scope, Subject
from budgetlimiter.usage import Metric, Usage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def limits_of(policy: Policy, subject: Subject) -> dict[str, dict[str, str]]:
    """scope text -> {"metric/period": amount} for compact assertions."""
    out: dict[str, dict[str, str]] = {}
    for sl in policy.resolve(subject).scopes:
        out[str(sl.scope)] = {f"{lim.metric.value}/{lim.period.value}": str(lim.amount)
                              for lim in sl.limits}
    return out


# --------------------------------------------------------------------------- examples


def test_example_files_load_to_equal_policies() -> None:
    y = load_policy(EXAMPLES / "policy.yaml")
    t = load_policy(str(EXAMPLES / "policy.toml"))
    assert y == t
    assert y.timezone_for("acme").key == "America/New_York"
    assert y.timezone_for("nobody").key == "UTC"
    assert y.week_start_index() == 0
    assert y.declared_orgs() == ("acme",)
    assert Scope("acme", "eng", "alice") in y.declared_scopes()
    org = y.orgs["acme"]
    assert org.limits[0].rollover is Rollover.ACCUMULATE and org.limits[0].cap_units == 500_000_000
    assert org.limits[1].mode is Mode.SOFT
    # every example scope resolves and serialises
    eff = y.resolve(Subject("acme", "copilot", "eng", "bob"))
    d = eff.to_dict()
    assert d["timezone"] == "America/New_York"
    assert all(isinstance(lim["amount"], str) for s in d["scopes"] for lim in s["limits"])


def test_resolve_is_cached_and_equality_ignores_cache() -> None:
    p = load_policy(EXAMPLES / "policy.yaml")
    q = load_policy(EXAMPLES / "policy.yaml")
    s = Subject("acme", "gpt-4o", "eng", "alice")
    assert p.resolve(s) is p.resolve(s)
    assert p == q


# --------------------------------------------------------------------------- inheritance

INHERIT = """
defaults:
  user:
    limits: [{metric: cost, amount: "1", period: day}]
  team:
    limits: [{metric: invocations, amount: 1000, period: day}]
  org:
    limits: [{metric: cost, amount: "10000", period: month}]
orgs:
  acme:
    defaults:
      user:
        limits:
          - {metric: cost, amount: "10", period: day}
          - {metric: total_tokens, amount: 5000, period: day}
      agent:
        limits: [{metric: invocations, amount: 7, period: day}]
    limits: [{metric: cost, amount: "500", period: month}]
    users:
      solo: {}
    teams:
      eng:
        defaults:
          user:
            limits:
              - {metric: cost, amount: "20", period: day}
              - {metric: input_tokens, amount: 100, period: hour}
            agents:
              copilot:
                limits: [{metric: invocations, amount: 3, period: day}]
          agent:
            limits: [{metric: invocations, amount: 9, period: day}]
        users:
          alice:
            limits: [{metric: cost, amount: "50", period: day}]
          hermit:
            inherit: false
            limits: [{metric: output_tokens, amount: 1, period: day}]
          loner:
            agents:
              copilot:
                inherit: false
                limits: [{metric: invocations, amount: 1, period: minute}]
      ops:
        inherit: false
        limits: [{metric: cost, amount: "5", period: day}]
"""


@pytest.fixture(scope="module")
def inherit_policy() -> Policy:
    return parse_policy(INHERIT)


def test_team_default_user_limit_applies_to_undeclared_user(inherit_policy: Policy) -> None:
    got = limits_of(inherit_policy, Subject("acme", "gpt", "eng", "zed"))
    assert got["org:acme/team:eng/user:zed"] == {"cost/day": "20", "input_tokens/hour": "100"}
    # the org's own agent default applies to the org agent scope, the team's to the team's
    assert got["org:acme/agent:gpt"] == {"invocations/day": "7"}
    assert got["org:acme/team:eng/agent:gpt"] == {"invocations/day": "9"}
    assert "org:acme/team:eng/user:zed/agent:gpt" not in got
    # team default from the top level
    assert got["org:acme/team:eng"] == {"invocations/day": "1000"}
    assert got["org:acme"] == {"cost/month": "500"}


def test_explicit_override_wins_per_key(inherit_policy: Policy) -> None:
    eff = inherit_policy.resolve(Subject("acme", "gpt", "eng", "alice"))
    user = next(s for s in eff.scopes if s.scope == Scope("acme", "eng", "alice"))
    assert {(lim.metric, lim.amount) for lim in user.limits} == {
        (Metric.COST, Decimal("50")),
        (Metric.INPUT_TOKENS, Decimal("100")),
    }
    assert user.origins == (
        "orgs.acme.teams.eng.users.alice.limits[0]",
        "orgs.acme.teams.eng.defaults.user.limits[1]",
    )


def test_inherit_false(inherit_policy: Policy) -> None:
    got = limits_of(inherit_policy, Subject("acme", "copilot", "eng", "hermit"))
    assert got["org:acme/team:eng/user:hermit"] == {"output_tokens/day": "1"}
    assert "org:acme/team:eng/user:hermit/agent:copilot" not in got
    ops = limits_of(inherit_policy, Subject("acme", "gpt", "ops"))
    assert ops["org:acme/team:ops"] == {"cost/day": "5"}
    loner = limits_of(inherit_policy, Subject("acme", "copilot", "eng", "loner"))
    assert loner["org:acme/team:eng/user:loner/agent:copilot"] == {"invocations/minute": "1"}


def test_nearest_default_wins(inherit_policy: Policy) -> None:
    # user without a team: the org's defaults.user (not the top-level one)
    got = limits_of(inherit_policy, Subject("acme", "gpt", user="solo"))
    assert got["org:acme/user:solo"] == {"cost/day": "10", "total_tokens/day": "5000"}
    # user of a team without defaults.user: the org's
    got = limits_of(inherit_policy, Subject("acme", "gpt", "ops", "kim"))
    assert got["org:acme/team:ops/user:kim"] == {"cost/day": "10", "total_tokens/day": "5000"}
    # undeclared org: top-level defaults
    got = limits_of(inherit_policy, Subject("other", "gpt", "t", "u"))
    assert got == {
        "org:other": {"cost/month": "10000"},
        "org:other/team:t": {"invocations/day": "1000"},
        "org:other/team:t/user:u": {"cost/day": "1"},
    }


def test_agent_defaults_of_default_user(inherit_policy: Policy) -> None:
    got = limits_of(inherit_policy, Subject("acme", "copilot", "eng", "zed"))
    assert got["org:acme/team:eng/user:zed/agent:copilot"] == {"invocations/day": "3"}
    got = limits_of(inherit_policy, Subject("acme", "copilot", "eng", "alice"))
    assert got["org:acme/team:eng/user:alice/agent:copilot"] == {"invocations/day": "3"}


def test_nested_defaults_and_top_agent_default() -> None:
    p = parse_policy(
        """
defaults:
  agent:
    rates: [{metric: requests, limit: 5, per: second}]
  team:
    defaults:
      user:
        limits: [{metric: cost, amount: "2", period: week}]
"""
    )
    eff = p.resolve(Subject("x", "gpt", "t", "u"))
    scopes = {str(s.scope): s for s in eff.scopes}
    assert scopes["org:x/agent:gpt"].rates[0].metric is Metric.INVOCATIONS
    assert scopes["org:x/agent:gpt"].origins == ("defaults.agent.rates[0]",)
    assert scopes["org:x/team:t/user:u"].origins == ("defaults.team.defaults.user.limits[0]",)
    assert set(scopes) == {"org:x/agent:gpt", "org:x/team:t/user:u"}


def test_odd_ids_in_origins() -> None:
    p = parse_policy('orgs:\n  "a.b c":\n    limits: [{metric: cost, amount: 1, period: day}]\n')
    eff = p.resolve(Subject("a.b c", "gpt"))
    assert eff.scopes[0].origins == ('orgs["a.b c"].limits[0]',)


# --------------------------------------------------------------------------- specs & pricing


def test_limit_and_rate_properties() -> None:
    lim = LimitSpec(metric=Metric.COST, amount=Decimal("12.345678"), period=PeriodKind.DAY)
    assert lim.units == 12_345_678 and lim.cap_units is None
    assert lim.key == (Metric.COST, PeriodKind.DAY)
    assert lim.thresholds == (50, 75, 90, 100)
    tok = LimitSpec.model_validate({"metric": "total_tokens", "amount": 1000, "period": "hour"})
    assert tok.units == 1000
    rate = RateSpec.model_validate({"metric": "requests", "limit": 10, "per": "minute"})
    assert rate.metric is Metric.INVOCATIONS
    assert (rate.per_ms, rate.burst_units, rate.key) == (60_000, 10, (Metric.INVOCATIONS, "minute"))
    yaml_float = parse_policy(
        "orgs: {a: {limits: [{metric: cost, amount: 0.1, period: day, thresholds: []}]}}"
    )
    spec = yaml_float.orgs["a"].limits[0]
    assert spec.amount == Decimal("0.1") and spec.units == 100_000 and spec.thresholds == ()


def test_pricing_exact() -> None:
    p = Pricing(input_per_million=Decimal("2.50"), output_per_million=Decimal("10"))
    assert p.cost_micros(Usage(input_tokens=1234, invocations=1)) == 3085
    assert p.cost_micros(Usage(input_tokens=1234, output_tokens=1000)) == 3085 + 10_000
    # 1 token at $0.15/M = 0.15 micro-USD -> rounds up to 1
    assert Pricing(input_per_million=Decimal("0.15")).cost_micros(Usage(input_tokens=1)) == 1
    assert Pricing(input_per_million=Decimal("0.15")).cost_micros(Usage(input_tokens=0)) == 0
    assert Pricing(per_invocation=Decimal("0.04")).cost_micros(Usage(invocations=3)) == 120_000
    assert p.cost_micros(Usage(input_tokens=5, cost=Decimal("0.000001"))) == 1
    big = Pricing(input_per_million=Decimal("0.000001"))
    assert big.cost_micros(Usage(input_tokens=2**52)) == -(-(2**52) // 1_000_000)


def test_pricing_for_and_unknown_agent() -> None:
    p = load_policy(EXAMPLES / "policy.yaml")
    assert p.pricing_for("copilot").per_invocation == Decimal("0.04")
    assert p.pricing_for("mystery") == p.default_pricing
    strict = parse_policy("pricing: {gpt: {input_per_million: 1}}")
    assert strict.pricing_for("gpt").input_per_million == 1
    with pytest.raises(UnknownAgent, match=r"'mystery'.*default_pricing"):
        strict.pricing_for("mystery")


# --------------------------------------------------------------------------- errors

BAD_CASES = [
    # (body under a limit list entry, expected field, message fragment)
    ("{metric: cost, amount: -5, period: day}", "amount", "negative"),
    ("{metric: cost, amount: '0.1234567', period: day}", "amount", "6 decimal"),
    ("{metric: input_tokens, amount: 1.5, period: day}", "amount", "whole number"),
    ("{metric: coins, amount: 1, period: day}", "metric", "Input should be"),
    ("{metric: cost, amount: 1, period: fortnight}", "period", "Input should be"),
    ("{metric: cost, amount: 1, period: day, mode: maybe}", "mode", "Input should be"),
    ("{metric: cost, amount: 1, period: day, rollover_cap: 2}", "rollover_cap", "accumulate"),
    ("{metric: cost, amount: 1, period: day, thresholds: [50, 50]}", "thresholds", "increasing"),
    ("{metric: cost, amount: 1, period: day, thresholds: [0]}", "thresholds", "greater than"),
    ("{metric: cost, amount: 1, period: day, amout: 2}", "amout", "unknown field"),
]


@pytest.mark.parametrize(("entry", "field", "fragment"), BAD_CASES)
def test_yaml_validation_errors_name_file_line_path_field(
    entry: str, field: str, fragment: str
) -> None:
    text = (
        "timezone: UTC\n"
        "orgs:\n"
        "  acme:\n"
        "    teams:\n"
        "      eng:\n"
        "        limits:\n"
        "          - {metric: cost, amount: 1, period: week}\n"
        f"          - {entry}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="policy.yaml")
    err = info.value
    assert err.file == "policy.yaml" and err.line == 8 and err.field == field
    path = "orgs.acme.teams.eng.limits[1]"
    assert err.path is not None and err.path.startswith(path)
    assert str(err).startswith(f"policy.yaml:8: {path}")
    assert fragment in str(err)


@pytest.mark.parametrize(("entry", "field", "fragment"), BAD_CASES)
def test_toml_validation_errors_name_file_line_path_field(
    entry: str, field: str, fragment: str
) -> None:
    import yaml

    fields = yaml.safe_load(entry)
    body = "\n".join(
        f"{k} = {_toml_value(v)}" for k, v in fields.items()
    )
    text = (
        'timezone = "UTC"\n'
        "[[orgs.acme.teams.eng.limits]]\n"
        'metric = "cost"\namount = 1\nperiod = "week"\n'
        "[[orgs.acme.teams.eng.limits]]\n"
        f"{body}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="policy.toml", fmt="toml")
    err = info.value
    key_line = 7 + list(fields).index(field)
    assert err.file == "policy.toml" and err.field == field
    assert err.line == key_line, str(err)
    assert str(err).startswith(f"policy.toml:{key_line}: orgs.acme.teams.eng.limits[1].{field}")
    assert fragment in str(err)


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [
        ("timezone: Mars/Olympus\n", 1, "timezone", "unknown timezone"),
        ("week_start: someday\n", 1, "week_start", "Input should be"),
        ("outage: shrug\n", 1, "outage", "Input should be"),
        ("reservation_ttl_seconds: 0\n", 1, "reservation_ttl_seconds", "greater than"),
        ("orgs:\n  a:\n    timezone: Nowhere/Town\n", 3, "orgs.a.timezone", "unknown timezone"),
        (
            "orgs:\n  a:\n    limits:\n      - {metric: cost, amount: 1, period: day}\n"
            "      - {metric: cost, amount: 2, period: day}\n",
            3,
            "orgs.a.limits",
            "duplicate limit",
        ),
        (
            "orgs:\n  a:\n    rates:\n      - {limit: 1, per: second}\n"
            "      - {metric: requests, limit: 2, per: second}\n",
            3,
            "orgs.a.rates",
            "duplicate rate limit",
        ),
        ("pricing:\n  gpt: {input_per_million: -1}\n", 2, "pricing.gpt.input_per_million",
         "negative"),
        ("orgs:\n  a:\n    rates:\n      - {metric: cost, limit: 1, per: second}\n", 4,
         "orgs.a.rates[0].metric", "rate limits count"),
        ('orgs:\n  "":\n    limits: []\n', 2, "orgs", "must not be empty"),
    ],
)
def test_other_yaml_errors(text: str, line: int, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    err = info.value
    assert (err.file, err.line) == ("p.yaml", line), str(err)
    assert err.path is not None and err.path.startswith(path), str(err)
    assert fragment in str(err)


def test_all_errors_reported_first_in_attributes() -> None:
    text = "timezone: Bad/Zone\noutage: nope\norgs:\n  a:\n    limitz: []\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    msg = str(info.value)
    assert msg.startswith("3 errors in policy p.yaml")
    assert "p.yaml:1: timezone" in msg and "p.yaml:2: outage" in msg
    assert "p.yaml:5: orgs.a.limitz: unknown field" in msg
    assert (info.value.line, info.value.field) == (1, "timezone")


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("orgs:\n  acme:\n    limits: [1, 2\n  x: 3\n", source="p.yaml")
    assert info.value.line == 4 and "YAML syntax error" in str(info.value)
    assert str(info.value).startswith("p.yaml:4:")


def test_toml_syntax_error_has_line() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy('timezone = "UTC"\norgs = [1,\n', source="p.toml", fmt="toml")
    assert info.value.line is not None and "TOML syntax error" in str(info.value)


def test_toml_inline_table_lines() -> None:
    text = (
        '[orgs.acme.teams.eng]\n'
        'limits = [\n'
        '  { metric = "cost", amount = "1", period = "day" },\n'
        '  { metric = "cost", amount = "-5", period = "week" },\n'
        ']\n'
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.toml", fmt="toml")
    assert info.value.line == 4
    assert info.value.path == "orgs.acme.teams.eng.limits[1].amount"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="unsupported policy file extension"):
        load_policy(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(PolicyError, match="empty"):
        load_policy(empty)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy(listy)
    bad = tmp_path / "bad.yaml"
    bad.write_text("orgs:\n  a:\n    limits:\n      - {metric: cost, amount: x, period: day}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    assert info.value.file == str(bad) and info.value.line == 4
