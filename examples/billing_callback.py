"""A billing callback: every committed cost goes to a ledger, once.

Guards and streaming guards take ``on_commit``: a hook called after each successful commit
with a :class:`~budgetlimiter.guard.Committed` (subject, usage, settle result with the exact
cost in USD). The ledger keys entries by the reservation id, so a retried delivery is not
billed twice. Run: ``python examples/billing_callback.py``.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.guard import Committed, Guard
from budgetlimiter.streaming import guarded_stream

POLICY = "orgs: {acme: {limits: [{metric: cost, amount: '50', period: month}]}}"


class BillingLedger:
    """In-memory ledger; a real one would insert into a billing table keyed by ``entry_id``."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str, Decimal]] = {}

    def __call__(self, committed: Committed) -> None:
        if committed.result.status != "committed" or committed.cost_usd is None:
            return  # "duplicate": already billed; "local": replayed (and billed) later
        account = committed.subject.team or committed.subject.org
        self.entries.setdefault(committed.result.id,
                                (account, committed.subject.agent, committed.cost_usd))

    def invoice(self) -> dict[str, Decimal]:
        """Total per account."""
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for account, _agent, cost in self.entries.values():
            totals[account] += cost
        return dict(totals)


def main(redis: str = "memory://billing") -> BillingLedger:
    ledger = BillingLedger()
    with BudgetLimiter(parse_policy(POLICY), redis) as limiter:
        eng = Subject("acme", "gpt-4o", team="eng", user="alice")  # priced by the shipped table
        with Guard(limiter, eng, Usage(2000, 500), on_commit=ledger) as guard:
            guard.set_actual(Usage(1200, 300))  # the call's real usage
        events = [{"type": "message_start", "message": {"usage": {
                       "input_tokens": 900, "cache_read_input_tokens": 0, "output_tokens": 1}}},
                  {"type": "message_delta", "usage": {"output_tokens": 250}}]
        ops = Subject("acme", "claude-sonnet-4-20250514", team="ops")
        for _event in guarded_stream(limiter, ops, Usage(1000, 1024), events, on_commit=ledger):
            pass
    for account, total in sorted(ledger.invoice().items()):
        print(f"{account}: {total} USD")
    return ledger


if __name__ == "__main__":
    main()
