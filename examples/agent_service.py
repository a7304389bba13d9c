"""Guarding an external agent service: ``ExternalAgentService.invoke()`` under budgets.

``ExternalAgentService`` stands in for any external agent API (here a contract-review agent
that reports its own token usage and a flat per-call price). ``GuardedAgentService`` wraps
it: estimate from the task, check and reserve, invoke, commit what the agent reported;
denied calls raise :class:`~budgetlimiter.BudgetExceeded` and never reach the agent, failed
calls release their reservation. Run: ``python examples/agent_service.py``.
"""

from __future__ import annotations

from typing import Any

from budgetlimiter import BudgetExceeded, BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.estimate import estimate_text
from budgetlimiter.extract import extract_usage

POLICY = """
pricing:
  contract-reviewer: {input_per_million: "3", output_per_million: "15", per_invocation: "0.05"}
orgs:
  acme:
    teams:
      legal:
        limits:
          - {metric: cost, amount: "0.30", period: day}
          - {metric: invocations, amount: 100, period: day}
"""


class ExternalAgentService:
    """A fake external agent: answers every task and reports what it used."""

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, task: str, *, max_output_tokens: int = 1000) -> dict[str, Any]:
        self.calls += 1
        answer = f"Reviewed: {task[:40]}... no blocking issues."
        return {"answer": answer,
                "usage": {"input_tokens": len(task) // 4 + 350,  # + the agent's own prompt
                          "output_tokens": min(max_output_tokens, 120)}}


class GuardedAgentService:
    """``ExternalAgentService`` with every invocation checked and committed."""

    PROMPT_OVERHEAD = 400  # the agent adds its own instructions: part of the upper bound

    def __init__(self, service: ExternalAgentService, limiter: BudgetLimiter,
                 subject: Subject, *, max_output_tokens: int = 1000) -> None:
        self.service, self.limiter, self.subject = service, limiter, subject
        self.max_output_tokens = max_output_tokens

    def invoke(self, task: str) -> dict[str, Any]:
        text = estimate_text(task, max_output=self.max_output_tokens)
        est = Usage(text.input_tokens + self.PROMPT_OVERHEAD, text.output_tokens)
        with self.limiter.guard(self.subject, est) as guard:  # BudgetExceeded when denied
            result = self.service.invoke(task, max_output_tokens=self.max_output_tokens)
            guard.set_actual(extract_usage(result) or est)
        return result


def main(redis: str = "memory://agent-service") -> GuardedAgentService:
    with BudgetLimiter(parse_policy(POLICY), redis) as limiter:
        service = GuardedAgentService(ExternalAgentService(), limiter,
                                      Subject("acme", "contract-reviewer", team="legal"))
        try:
            for n in range(1, 100):
                service.invoke(f"Review contract #{n}: supplier agreement, 12 pages. " * 5)
        except BudgetExceeded as exc:
            print(f"call {n} denied: {exc.decision}")
        (cost,) = [s for s in limiter.scope_status("org:acme/team:legal")
                   if s.metric.value == "cost"]
        print(f"{service.service.calls} calls made, team spent {cost.used / 1e6:.6f} USD")
    return service


if __name__ == "__main__":
    main()
