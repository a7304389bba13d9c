"""``budgetlimiter demo``: the main job on the embedded ``memory://`` backend, no server needed.

A burst of simulated agent invocations for org ``acme`` (two teams, several users, three
agents): each one is checked with an estimate, then committed with its actual usage. The
report says what was admitted, what was blocked by which scope, and which thresholds fired.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path

from .client import BudgetLimiter
from .policy import Policy, load_policy
from .results import ThresholdCrossing
from .subject import Subject
from .usage import Metric, Usage, micros_to_usd

PEOPLE = [("eng", "alice"), ("eng", "bob"), ("eng", "carol"), ("research", "dan"),
          ("research", "erin"), ("research", "frank")]
AGENTS = ["gpt-4o", "claude-sonnet", "copilot"]


def demo_policy_path() -> Path:
    """The example policy: shipped in the wheel, or ``examples/policy.yaml`` in a checkout."""
    packaged = resources.files("budgetlimiter") / "data" / "policy.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"


@dataclass
class DemoReport:
    """What the demo did; printed by the CLI, asserted by the tests."""

    invocations: int = 0
    admitted: int = 0
    blocked: Counter[str] = field(default_factory=Counter)
    admitted_by_team: Counter[str] = field(default_factory=Counter)
    blocked_by_team: Counter[str] = field(default_factory=Counter)
    cost_micros: int = 0
    tokens: int = 0
    thresholds: list[tuple[datetime, ThresholdCrossing]] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)


def _describe(metric: Metric, amount: int) -> str:
    return f"${micros_to_usd(amount):.2f}" if metric is Metric.COST else f"{amount:,}"


def run_demo(invocations: int = 300, seed: int = 7, policy: Policy | None = None,
             start: datetime | None = None) -> DemoReport:
    """Drive ``invocations`` simulated calls through a fresh in-process limiter."""
    pol = policy or load_policy(demo_policy_path())
    rng = random.Random(seed)
    now = [int((start or datetime(2026, 11, 30, 14, 0, tzinfo=timezone.utc)).timestamp() * 1000)]
    clock: Callable[[], int] = lambda: now[0]  # noqa: E731 - simulated time
    limiter = BudgetLimiter(pol, f"memory://demo-{seed}-{rng.random()}", clock=clock)
    report = DemoReport()
    for _ in range(invocations):
        now[0] += rng.randint(2_000, 12_000)
        team, user = rng.choice(PEOPLE)
        agent = rng.choices(AGENTS, weights=[5, 3, 2])[0]
        subject = Subject("acme", agent, team=team, user=user)
        prompt = rng.randint(2_000, 60_000)
        max_out = rng.choice([1024, 2048, 4096])
        estimate = Usage(input_tokens=prompt, output_tokens=max_out)
        report.invocations += 1
        decision = limiter.check(subject, estimate)
        if not decision.allowed:
            b = decision.blocked_by
            label = (f"{b.kind} {b.metric.value} {b.period} of {b.scope}" if b
                     else decision.reason)
            report.blocked[label] += 1
            report.blocked_by_team[team] += 1
            continue
        for w in decision.warnings:
            report.warnings[f"{w.metric.value} {w.period} of {w.scope}"] += 1
        actual = Usage(input_tokens=prompt, output_tokens=rng.randint(10, max_out))
        assert decision.reservation is not None
        result = limiter.commit(decision.reservation, actual)
        report.admitted += 1
        report.admitted_by_team[team] += 1
        if result.actual is not None:
            report.cost_micros += result.actual.cost
            report.tokens += result.actual.total_tokens
        when = datetime.fromtimestamp(now[0] / 1000, tz=timezone.utc)
        report.thresholds += [(when, t) for t in result.thresholds]
    limiter.close()
    return report


def format_report(report: DemoReport) -> str:
    lines = [
        f"Simulated {report.invocations} agent invocations for org acme "
        "(teams eng and research, 6 users, agents gpt-4o / claude-sonnet / copilot).",
        "",
        f"Admitted {report.admitted}, blocked {sum(report.blocked.values())}; committed "
        f"${micros_to_usd(report.cost_micros):.6f} for {report.tokens:,} tokens.",
        "",
        f"{'team':<10} {'admitted':>9} {'blocked':>8}",
    ]
    for team in ("eng", "research"):
        lines.append(f"{team:<10} {report.admitted_by_team[team]:>9} "
                     f"{report.blocked_by_team[team]:>8}")
    lines += ["", "Blocked by (the first limit that did not fit; nothing was reserved anywhere):"]
    for label, n in report.blocked.most_common():
        lines.append(f"  {n:>5}  {label}")
    if not report.blocked:
        lines.append("  (nothing)")
    if report.warnings:
        lines += ["", "Soft limits exceeded (admitted with a warning):"]
        for label, n in report.warnings.most_common():
            lines.append(f"  {n:>5}  {label}")
    lines += ["", "Thresholds crossed (each fires once per scope, metric and period):"]
    for when, t in report.thresholds:
        lines.append(
            f"  {when:%H:%M:%S}  {t.threshold:>3}%  {t.metric.value} per {t.period} of "
            f"{t.scope}  ({_describe(t.metric, t.used)} of {_describe(t.metric, t.limit)})"
        )
    if not report.thresholds:
        lines.append("  (none)")
    return "\n".join(lines)


__all__ = ["Decimal", "DemoReport", "demo_policy_path", "format_report", "run_demo"]
