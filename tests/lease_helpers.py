"""Shared pieces of the lease tests: the subject, the estimates and status lookups."""

from __future__ import annotations

from budgetlimiter import Subject, Usage

from .policies import LEASES

ORG = Subject("acme", "gpt")
ONE = Usage(input_tokens=10)  # 1 invocation, 10 micro-USD
ZERO = Usage(invocations=0)  # an all-zero estimate


def inv(limits):
    return next(s for s in limits if s.metric.value == "invocations")


def cost(limits):
    return next(s for s in limits if s.metric.value == "cost")


def with_amount(n: int) -> str:
    """The lease policy with another daily invocation budget than 25."""
    return LEASES.replace("amount: 25", f"amount: {n}")
