"""budgetlimiter: atomic hierarchical token, cost and rate budgets for AI agent invocations."""

from __future__ import annotations

from .aio import AsyncBudgetLimiter
from .client import BudgetLimiter
from .engine.leases import LeaseConfig
from .errors import (
    BackendRejected,
    BackendUnavailable,
    BudgetExceeded,
    BudgetLimiterError,
    ClockSkew,
    InvalidAmount,
    InvalidId,
    InvalidInput,
    PolicyError,
    ReservationExists,
    ReservationNotFound,
    ReservationSettled,
    UnknownAgent,
    UnknownScope,
)
from .extract import extract_usage
from .policy import Policy, load_policy, parse_policy
from .results import Decision, LimitStatus, Reservation, SettleResult, ThresholdCrossing
from .subject import Scope, Subject
from .usage import Metric, Usage

__version__ = "0.1.0"

__all__ = [
    "AsyncBudgetLimiter",
    "BackendRejected",
    "BackendUnavailable",
    "BudgetExceeded",
    "BudgetLimiter",
    "BudgetLimiterError",
    "ClockSkew",
    "Decision",
    "InvalidAmount",
    "InvalidId",
    "InvalidInput",
    "LeaseConfig",
    "LimitStatus",
    "Metric",
    "Policy",
    "PolicyError",
    "Reservation",
    "ReservationExists",
    "ReservationNotFound",
    "ReservationSettled",
    "Scope",
    "SettleResult",
    "Subject",
    "ThresholdCrossing",
    "UnknownAgent",
    "UnknownScope",
    "Usage",
    "extract_usage",
    "load_policy",
    "parse_policy",
]
