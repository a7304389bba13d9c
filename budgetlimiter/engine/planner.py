"""The sans-I/O core: turns a request into (script, KEYS, ARGV) and a reply into a result.

Nothing here talks to Redis or reads a clock; the sync and asyncio clients are thin shells that
execute :class:`ScriptCall` objects. The rules themselves live in ``lua/``; this module only
builds their arguments and reads their replies.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import InvalidInput
from ..policy import LimitSpec, Mode, Policy, RateSpec, Rollover, ScopeLimits
from ..policy.periods import PeriodKind, Window, previous_window, window_at
from ..results import Decision, Reservation, ms_to_datetime
from ..subject import Scope, Subject, validate_reservation_id
from ..usage import METRIC_ORDER, Amounts, Usage
from .calls import ScriptCall
from .keys import KeySpace
from .replies import NOTHING, ReplyReader, decision


@dataclass(frozen=True, slots=True)
class _Budget:
    scopelimits: ScopeLimits
    spec: LimitSpec
    window: Window
    origin: str


@dataclass(frozen=True, slots=True)
class _Rate:
    scopelimits: ScopeLimits
    spec: RateSpec
    origin: str


@dataclass(slots=True)
class _Template:
    """Everything about a subject's check that does not change until a window ends: keys,
    per-limit arguments and plan lines. Only amounts, times and the reservation id vary."""

    valid_from: int
    valid_until: int
    budgets: list[_Budget]
    rates: list[_Rate]
    keys: list[str]  # keys[1] is a placeholder for the reservation key
    budget_rows: list[tuple[int, str, str, int, int, int, int, int]]
    rate_rows: list[tuple[int, str, int, int]]
    plan_parts: list[tuple[str, int, str]]
    ledger: str
    budget_keys: tuple[tuple[str, str], ...]
    resets: list[datetime]
    #: ARGV after the 8 head values, with 0 where an amount goes, and where they go
    #: (position in that list, index of the metric in the amount vector)
    arg_tail: list[str | int]
    amount_slots: list[tuple[int, int]]
    reader: ReplyReader
    #: metrics of the hard budgets (indexes in the amount vector), for leases
    hard_metrics: tuple[int, ...]


#: ARGV of ``check.lua`` before the first budget entry, and the estimate's place in an entry
_HEAD = 9
_BUDGET_ENTRY = 8


def budget_estimate(call: ScriptCall, index: int) -> int:
    """The estimate a planned check sends for its ``index``-th budget."""
    return int(call.args[_HEAD + _BUDGET_ENTRY * index + 2])


_TEMPLATE_CACHE_MAX = 50_000
_AMOUNTS_CACHE_MAX = 4096
_METRIC_INDEX = {m.value: i for i, m in enumerate(METRIC_ORDER)}


class Core:
    """Plans the check script's calls (the layout of ``lua/check.lua``) for one policy and
    key space, and what every script needs from a policy: amounts, limits, ledger keys.

    ``clock_tolerance_ms``: how far the caller's clock may be from Redis's before a script
    refuses to act on it (-1: trust the caller's clock).
    """

    def __init__(self, policy: Policy, keys: KeySpace | None = None, *,
                 cluster: bool = False, idempotency_ms: int | None = None,
                 clock_tolerance_ms: int = -1) -> None:
        self.policy = policy
        self.keys = keys or KeySpace()
        self.cluster = cluster
        self.idempotency_ms = (policy.idempotency_seconds * 1000 if idempotency_ms is None
                               else idempotency_ms)
        self.clock_tolerance_ms = clock_tolerance_ms
        self._week_start = policy.week_start_index()
        self._templates: dict[Subject, _Template] = {}
        self._amounts: dict[tuple[str, Usage], Amounts] = {}
        #: whether a check runs check.lua's sampled expiry sweep; None: about one check in
        #: eight, picked from the reservation id and the clock. A test hook (see
        #: :attr:`Engine.sweep_sampler <budgetlimiter.engine.engine.Engine.sweep_sampler>`).
        self.sweep_sampler: Callable[[], bool] | None = None

    # amounts -------------------------------------------------------------------
    def amounts(self, subject: Subject, usage: Usage) -> Amounts:
        """Integer amounts of a usage; cost from the agent's pricing unless given."""
        if not isinstance(usage, Usage):
            raise InvalidInput(f"usage must be a budgetlimiter.Usage, got {type(usage).__name__}")
        # Estimates repeat (one per model and prompt size, say) and exact Decimal pricing costs
        # more than the rest of planning: remember recent results (usages are immutable).
        key = (subject.agent, usage)
        try:
            hit = self._amounts.get(key)
        except TypeError:  # an unhashable Usage subclass
            return self._compute_amounts(subject, usage)
        if hit is None:
            hit = self._compute_amounts(subject, usage)
            if len(self._amounts) >= _AMOUNTS_CACHE_MAX:
                self._amounts.clear()
            self._amounts[key] = hit
        return hit

    def _compute_amounts(self, subject: Subject, usage: Usage) -> Amounts:
        if usage.cost is not None:
            from ..usage import usd_to_micros

            cost = usd_to_micros("cost", usage.cost)
        else:
            cost = self.policy.pricing_for(subject.agent).cost_micros(usage)
        return Amounts(
            invocations=usage.invocations,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            cost=cost,
        )

    # planning helpers ----------------------------------------------------------
    def limits(self, subject: Subject, now_ms: int) -> tuple[list[_Budget], list[_Rate]]:
        eff = self.policy.resolve(subject)
        return self._limits_of(eff.scopes, eff.timezone, now_ms)

    def _limits_of(self, scopes: Sequence[ScopeLimits], tz: ZoneInfo,
                   now_ms: int) -> tuple[list[_Budget], list[_Rate]]:
        budgets: list[_Budget] = []
        rates: list[_Rate] = []
        for sl in scopes:
            n = len(sl.limits)
            for i, spec in enumerate(sl.limits):
                window = window_at(spec.period, now_ms, tz, self._week_start)
                budgets.append(_Budget(sl, spec, window, sl.origins[i] if sl.origins else ""))
            for i, rspec in enumerate(sl.rates):
                rates.append(_Rate(sl, rspec, sl.origins[n + i] if sl.origins else ""))
        return budgets, rates

    def scope_limits(self, scope: Scope) -> ScopeLimits | None:
        """The effective limits of one scope (``None`` when it has none)."""
        # limits of an org/team/user scope do not depend on the agent: any id resolves them
        subject = Subject(scope.org, scope.agent or "-", team=scope.team, user=scope.user)
        for sl in self.policy.resolve(subject).scopes:
            if sl.scope == scope:
                return sl
        return None

    def plan_lines(self, budgets: list[_Budget], amounts: Amounts) -> str:
        """Plan lines for the settle script (see the format in ``lua/lib.lua``)."""
        retention = self.policy.retention_seconds * 1000
        lines = []
        for b in budgets:
            spec = b.spec
            carry = self._carry_field(b)
            ths = ",".join(str(t) for t in spec.thresholds)
            key = self.keys.counter(b.scopelimits.scope, b.window)
            lines.append(
                f"c\t{key}\t{spec.metric.code}\t{amounts.get(spec.metric)}\t{spec.units}"
                f"\t{carry}\t{ths}\t{b.window.end_ms + retention}\n"
            )
        return "".join(lines)

    def _carry_field(self, b: _Budget) -> str:
        """<carry> of a plan line (lua/lib.lua): ``0`` for reset; for accumulate
        ``-1|<cap>|<previous period's counter key>``, so that a settle judging thresholds
        before any check of the period can compute the carry as the check would."""
        spec = b.spec
        if spec.rollover is not Rollover.ACCUMULATE:
            return "0"
        scope = b.scopelimits.scope
        prev = previous_window(b.window, self.policy.timezone_for(scope.org), self._week_start)
        cap = -1 if spec.cap_units is None else spec.cap_units
        return f"-1|{cap}|{self.keys.counter(scope, prev)}"

    def ledger(self, subject: Subject, now_ms: int) -> tuple[str, int]:
        """The subject's ledger key for the day of ``now_ms`` and when it may expire."""
        tz = self.policy.timezone_for(subject.org)
        day = window_at(PeriodKind.DAY, now_ms, tz, self._week_start)
        return self.keys.ledger(subject, day.id), day.end_ms + self.policy.retention_seconds * 1000

    def _check_args(self, org: str, keys: list[str], budgets: list[_Budget],
                    rates: list[_Rate], amounts: Amounts) -> tuple[list[str], list[str | int]]:
        """KEYS and per-limit ARGV of ``lua/check.lua`` (see its header)."""
        ks = self.keys
        index: dict[str, int] = {}

        def key_index(key: str) -> int:
            pos = index.get(key)
            if pos is None:
                keys.append(key)
                pos = index[key] = len(keys)
            return pos

        retention = self.policy.retention_seconds * 1000
        args: list[str | int] = []
        tz = self.policy.timezone_for(org)
        for b in budgets:
            spec = b.spec
            prev = 0
            if spec.rollover is Rollover.RESET:
                cap = -1
            else:
                cap = -2 if spec.cap_units is None else spec.cap_units
                pw = previous_window(b.window, tz, self._week_start)
                prev = key_index(ks.counter(b.scopelimits.scope, pw))
            args += [
                key_index(ks.counter(b.scopelimits.scope, b.window)),
                spec.metric.code,
                amounts.get(spec.metric),
                spec.units,
                1 if spec.mode is Mode.HARD else 0,
                b.window.end_ms + retention,
                cap,
                prev,
            ]
        for r in rates:
            rs = r.spec
            interval = math.ceil(rs.per_ms * 1000 / rs.limit)
            args += [
                key_index(ks.rate(r.scopelimits.scope, rs.metric, rs.per)),
                amounts.get(rs.metric),
                interval,
                rs.burst_units * interval,
            ]
        return keys, args

    # check ---------------------------------------------------------------------
    def _template(self, subject: Subject, now_ms: int) -> _Template:
        t = self._templates.get(subject)
        if t is not None and t.valid_from <= now_ms < t.valid_until:
            return t
        budgets, rates = self.limits(subject, now_ms)
        org = subject.org
        ks = self.keys
        keys, args = self._check_args(org, [ks.reservations_by_expiry(org), ""], budgets,
                                      rates, Amounts())
        budget_rows = []
        for i in range(len(budgets)):
            row = args[i * 8:(i + 1) * 8]
            budget_rows.append((int(row[0]), str(row[1]), budgets[i].spec.metric.value,
                                int(row[3]), int(row[4]), int(row[5]), int(row[6]),
                                int(row[7])))
        base = len(budgets) * 8
        rate_rows = []
        for j in range(len(rates)):
            row = args[base + j * 4:base + (j + 1) * 4]
            rate_rows.append((int(row[0]), rates[j].spec.metric.value, int(row[2]),
                              int(row[3])))
        retention = self.policy.retention_seconds * 1000
        plan_parts = []
        for b in budgets:
            spec = b.spec
            carry = self._carry_field(b)
            ths = ",".join(str(x) for x in spec.thresholds)
            key = ks.counter(b.scopelimits.scope, b.window)
            plan_parts.append((f"c\t{key}\t{spec.metric.code}\t", _METRIC_INDEX[spec.metric.value],
                               f"\t{spec.units}\t{carry}\t{ths}\t{b.window.end_ms + retention}\n"))
        arg_tail: list[str | int] = []
        slots: list[tuple[int, int]] = []
        for idx, code, m, units, hard, exp, cap, prev in budget_rows:
            slots.append((len(arg_tail) + 2, _METRIC_INDEX[m]))
            arg_tail += (idx, code, 0, units, hard, exp, cap, prev)
        for idx, m, interval, tol in rate_rows:
            slots.append((len(arg_tail) + 1, _METRIC_INDEX[m]))
            arg_tail += (idx, 0, interval, tol)
        tz = self.policy.timezone_for(org)
        day = window_at(PeriodKind.DAY, now_ms, tz, self._week_start)
        ends = [b.window.end_ms for b in budgets] + [day.end_ms]
        starts = [b.window.start_ms for b in budgets] + [day.start_ms]
        t = _Template(
            valid_from=max(starts), valid_until=min(ends), budgets=budgets, rates=rates, keys=keys,
            budget_rows=budget_rows, rate_rows=rate_rows, plan_parts=plan_parts,
            ledger=ks.ledger(subject, day.id),
            budget_keys=tuple((ks.counter(b.scopelimits.scope, b.window), b.spec.metric.code)
                              for b in budgets),
            resets=[ms_to_datetime(b.window.end_ms) for b in budgets],
            arg_tail=arg_tail, amount_slots=slots, reader=ReplyReader(budgets, rates),
            hard_metrics=tuple(sorted({_METRIC_INDEX[b.spec.metric.value] for b in budgets
                                       if b.spec.mode is Mode.HARD})),
        )
        if len(self._templates) >= _TEMPLATE_CACHE_MAX:
            self._templates.clear()
        self._templates[subject] = t
        return t

    def lease_terms(self, subject: Subject, now_ms: int) -> tuple[bool, tuple[int, ...], int]:
        """What leases need to know of a subject: whether it has rate limits, the metrics of
        its hard budgets (indexes in the amount vector), and when its earliest period ends."""
        t = self._template(subject, now_ms)
        return bool(t.rates), t.hard_metrics, t.valid_until

    def plan_check(self, subject: Subject, estimate: Usage, now_ms: int, *,
                   reservation_id: str | None = None, ttl_seconds: float | None = None,
                   dry_run: bool = False) -> ScriptCall:
        """Plan an all-or-nothing check-and-reserve (or, with ``dry_run``, a status read)."""
        if not isinstance(subject, Subject):
            raise InvalidInput(
                f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
        amounts = self.amounts(subject, estimate)
        prefix = self.keys.reservation_prefix(subject.org)
        if reservation_id is None:
            rid = os.urandom(16).hex()  # key-safe as it is: no validation or encoding needed
            rkey = prefix + rid
        else:
            rid = validate_reservation_id(reservation_id)
            rkey = self.keys.reservation(subject.org, rid)
        ttl = self.policy.reservation_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and 0 < ttl <= 7 * 86400):
            raise InvalidInput(f"reservation ttl must be in (0, 604800] seconds, got {ttl!r}")
        ttl_ms = int(ttl * 1000)
        t = self._template(subject, now_ms)
        org = subject.org
        keys = list(t.keys)
        keys[1] = rkey
        vec = (amounts.invocations, amounts.input_tokens, amounts.output_tokens,
               amounts.total_tokens, amounts.cost)
        expires = now_ms + ttl_ms
        plan = "".join([f"|{expires}|{t.ledger}\n",
                        *[pre + str(vec[m]) + post for pre, m, post in t.plan_parts]])
        tail = t.arg_tail.copy()
        for pos, m in t.amount_slots:
            tail[pos] = vec[m]
        # ARGV[4]: 0, or 2 under a caller's id, plus 4 to run the sampled expiry sweep on about
        # one check in eight: the random id's last character and the clock vary the sample (a
        # caller's ids may all end alike); a test forces it either way (sweep_sampler)
        if dry_run:
            mode = 1
        else:
            sampler = self.sweep_sampler
            sweep = (ord(rid[-1]) + now_ms) & 7 == 0 if sampler is None else sampler()
            mode = (0 if reservation_id is None else 2) + (4 if sweep else 0)
        args: list[str | int] = [
            now_ms,
            0 if dry_run else expires,
            ttl_ms + self.idempotency_ms,
            mode,
            prefix,
            plan,
            len(t.budgets),
            len(t.rates),
            self.clock_tolerance_ms,
            *tail,
        ]
        reservation = None if dry_run else Reservation(
            id=rid, subject=subject, estimate=amounts, created_ms=now_ms, expires_ms=expires,
            plan=plan,
        )
        reader = t.reader

        def parse(reply: Any) -> Decision:
            return decision(subject, reservation, reader, now_ms, reply, dry_run, vec)

        return ScriptCall("check", keys, args, parse, org, t.budget_keys, rid)

    # status ------------------------------------------------------------------------
    def plan_status(self, subject: Subject, now_ms: int) -> ScriptCall:
        """A read of every limit of a subject (expired reservations are swept first)."""
        if not isinstance(subject, Subject):
            raise InvalidInput(
                f"subject must be a budgetlimiter.Subject, got {type(subject).__name__}")
        return self._plan_read(subject, self.policy.resolve(subject).scopes, now_ms)

    def plan_scope_status(self, scope: Scope, now_ms: int) -> ScriptCall:
        """A read of every limit declared for one scope (no subject needed)."""
        sl = self.scope_limits(scope)
        subject = Subject(scope.org, scope.agent or "-", team=scope.team, user=scope.user)
        return self._plan_read(subject, [sl] if sl is not None else [], now_ms)

    def _plan_read(self, subject: Subject, scopes: Sequence[ScopeLimits],
                   now_ms: int) -> ScriptCall:
        org = subject.org
        budgets, rates = self._limits_of(scopes, self.policy.timezone_for(org), now_ms)
        ks = self.keys
        keys, args = self._check_args(org, [ks.reservations_by_expiry(org),
                                            ks.reservation(org, "status")], budgets, rates,
                                      Amounts())
        head: list[str | int] = [now_ms, 0, 1, 1, ks.reservation_prefix(org), "", len(budgets),
                                 len(rates), self.clock_tolerance_ms]

        reader = ReplyReader(budgets, rates)

        def parse(reply: Any) -> Decision:
            return decision(subject, None, reader, now_ms, reply, True, NOTHING)

        return ScriptCall("check", keys, head + args, parse, org)
