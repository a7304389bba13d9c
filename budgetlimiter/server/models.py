"""Request and response schemas of the HTTP API (pydantic v2; published as OpenAPI 3.1).

Requests are validated strictly: unknown fields, wrong JSON types (``"5"`` for a count,
``true`` for an integer, ``1.5`` tokens), negative amounts and money given as a JSON number are
all refused with a ``422`` problem before anything reaches Redis. Money is a decimal string in
USD (``"0.011"``); counts are integers (a JSON number with no fraction, such as ``3.0``, is
that integer, as JSON Schema has it). What the published document says is what is enforced:
ids and their pattern come from :mod:`.params`, and rules JSON Schema cannot state (a subject
of another org than the reservation's) have their own status code (409 ``org_mismatch``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..subject import Subject
from ..usage import Usage
from .params import ID_PATTERN, MAX_ID, id_error

#: at most this many tokens, and invocations, in one usage: far beyond any call, and low
#: enough that no price of a sane policy takes the cost past the ~9 billion USD an amount holds
MAX_TOKENS = 10**12
MAX_INVOCATIONS = 10**9


def _valid_id(value: str) -> str:
    why = id_error(value)
    if why is not None:
        raise PydanticCustomError("invalid_id", "id {why}", {"why": why})
    return value


def _integral(value: Any) -> Any:
    """A float without a fraction is that integer (JSON Schema's ``integer``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# the pattern is published, and enforced by _valid_id (which names the problem invalid_id)
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID, json_schema_extra={
                   "pattern": ID_PATTERN},
                          description="1 to 256 characters, no control characters."),
               AfterValidator(_valid_id)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS), BeforeValidator(_integral)]
Invocations = Annotated[int, Field(ge=0, le=MAX_INVOCATIONS), BeforeValidator(_integral)]
Money = Annotated[str, Field(pattern=r"^[0-9]{1,9}(\.[0-9]{1,12})?$",
                             description="USD as a decimal string, e.g. \"0.011\" (below one "
                             "billion; fractions of a micro-dollar round up).",
                             examples=["0.011"])]
MoneyOrCount = Annotated[str | int, Field(
    description="Decimal USD string for the cost metric, an integer otherwise.")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SubjectIn(_In):
    """Who is asking: org, optional team and user, and the agent being invoked."""

    org: Id
    agent: Id
    team: Id | None = None
    user: Id | None = None

    def to_subject(self) -> Subject:
        return Subject(self.org, self.agent, team=self.team, user=self.user)


class UsageIn(_In):
    """An estimate or actual usage. ``cost`` (USD) overrides the agent's pricing."""

    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    invocations: Invocations = 1
    cost: Money | None = None

    def to_usage(self) -> Usage:
        cost = Decimal(self.cost) if self.cost is not None else None
        return Usage(self.input_tokens, self.output_tokens, self.invocations, cost)


ESTIMATE_DEFAULT = ("What the call may use. Omitted (or {}): one invocation and no tokens, "
                    "as the library's Usage(): it counts against invocation budgets and "
                    "request rates, costs the agent's per-invocation price, and an exhausted "
                    "budget refuses it like any other request.")
Ttl = Annotated[float, Field(gt=0, le=604800, description="Reservation TTL in seconds.")]


class CheckRequest(_In):
    """Check and reserve: all-or-nothing over every scope and limit of the subject."""

    subject: SubjectIn
    estimate: UsageIn = Field(default=UsageIn(), description=ESTIMATE_DEFAULT)
    ttl: Ttl | None = None
    reservation_id: Id | None = None


def _commit_schema(schema: dict[str, Any]) -> None:
    # what JSON Schema can say of "subject or actual.cost"
    schema["anyOf"] = [
        {"required": ["subject"], "properties": {"subject": {"type": "object"}}},
        {"required": ["actual"], "properties": {"actual": {
            "required": ["cost"], "properties": {"cost": {"type": "string"}}}}},
    ]


class CommitRequest(_In):
    """Replace a reservation's estimate by the actual usage (idempotent by id).

    The sidecar keeps no reservation objects, so it needs ``subject`` to price ``actual`` with
    the agent's pricing, unless ``actual.cost`` is given. A ``subject`` of another org than
    ``org`` is answered 409 ``org_mismatch`` (a rule JSON Schema cannot state).
    """

    model_config = ConfigDict(json_schema_extra=_commit_schema)

    org: Id
    reservation_id: Id
    actual: UsageIn
    subject: SubjectIn | None = None

    @model_validator(mode="after")
    def _priced(self) -> CommitRequest:
        if self.subject is None and self.actual.cost is None:
            raise PydanticCustomError(
                "missing", "subject (to price actual with the agent's pricing) or actual.cost "
                "is required")
        return self


class ReleaseRequest(_In):
    """Refund a reservation that will not be used (idempotent)."""

    org: Id
    reservation_id: Id


class RecordRequest(_In):
    """Post-hoc usage without a reservation, idempotent by ``request_id`` (generated when
    absent, which makes retries count twice)."""

    subject: SubjectIn
    actual: UsageIn
    request_id: Id | None = None


class BatchItem(_In):
    subject: SubjectIn
    estimate: UsageIn = Field(default=UsageIn(), description=ESTIMATE_DEFAULT)


class BatchRequest(_In):
    """Independent checks in one pipelined round trip (at most 1000)."""

    items: Annotated[list[BatchItem], Field(max_length=1000)]
    ttl: Ttl | None = None


# responses ---------------------------------------------------------------------------------

class LimitOut(BaseModel):
    """One limit of one scope as Redis saw it. Amounts are in the metric's unit: decimal USD
    strings for cost, integers otherwise."""

    scope: str
    kind: Literal["budget", "rate"]
    metric: str
    period: str = Field(description="a budget's period (day, month, ...); for a rate limit "
                        "'per second|minute|hour'")
    mode: Literal["hard", "soft"]
    limit: MoneyOrCount = Field(
        description="budget: the effective limit (amount + carry); rate limit: the rate, in "
                    "units per period")
    burst: int | None = Field(
        description="rate limit: the bucket (units that may go at once); null for budgets")
    requested: MoneyOrCount = Field(
        description="what this request asked for of the metric (0 in status reads)")
    taken: MoneyOrCount = Field(
        description="used + reserved (an admitted check's own reservation included); rate "
                    "limit: how much of the burst is in use")
    used: MoneyOrCount | None = Field(
        description="null in every limit of an admitted check (it reads used + reserved as "
                    "one counter); refusals and status reads report it")
    reserved: MoneyOrCount | None = Field(description="null when used is null")
    remaining: MoneyOrCount = Field(description="limit - taken (rate limit: burst - taken)")
    carry: MoneyOrCount
    percent: float
    resets_at: str | None
    state: Literal["ok", "soft_exceeded", "blocked"]


class DecisionOut(BaseModel):
    """The answer to a check; ``reservation_id`` is set when allowed."""

    allowed: bool
    subject: str
    reservation_id: str | None
    expires_at: str | None
    blocked_by: LimitOut | None
    retry_after: float | None
    reason: str
    degraded: bool
    limits: list[LimitOut]


class ThresholdOut(BaseModel):
    scope: str
    metric: str
    period: str
    period_id: str
    threshold: int
    used: MoneyOrCount
    limit: MoneyOrCount


class SettleOut(BaseModel):
    """Result of commit, release or record."""

    status: Literal["committed", "recorded", "released", "duplicate", "late", "local"]
    id: str
    cost: str | None
    overshoot: bool
    thresholds: list[ThresholdOut]


class BatchOut(BaseModel):
    decisions: list[DecisionOut]


class ScopeStatusOut(BaseModel):
    """Live counters of the limits declared for one scope."""

    scope: str
    limits: list[LimitOut]


class TrendPoint(BaseModel):
    period: str
    value: MoneyOrCount


class UsageOut(BaseModel):
    """A report from the durable store (flushed usage; cost as decimal USD strings)."""

    org: str
    by: Literal["agent", "team", "user", "trend"]
    from_: str = Field(alias="from")
    to: str
    rows: list[dict[str, MoneyOrCount]] = []
    series: list[TrendPoint] = []


class EffectiveLimitOut(BaseModel):
    metric: str
    amount: str
    period: str
    mode: str
    thresholds: list[int]
    rollover: str
    rollover_cap: str | None
    forecast_alert: bool = Field(description="budget.forecast_exceeded is sent for it")
    origin: str


class EffectiveRateOut(BaseModel):
    metric: str
    limit: int
    per: str
    burst: int
    origin: str


class EffectiveScopeOut(BaseModel):
    scope: str
    limits: list[EffectiveLimitOut]
    rates: list[EffectiveRateOut]


class SubjectOut(BaseModel):
    org: str
    team: str | None
    user: str | None
    agent: str


class EffectivePolicyOut(BaseModel):
    """What the loaded policy applies to one subject, with where each limit was declared."""

    subject: SubjectOut
    timezone: str
    scopes: list[EffectiveScopeOut]


class BudgetForecastOut(BaseModel):
    """Where one budget is heading by its period's end. Amounts are decimal strings in the
    metric's unit (USD for cost); ``projected``, ``rate_per_hour`` and ``exhausts_at`` are
    null with too little data (``reason`` says what was missing)."""

    scope: str
    metric: str
    period: str
    period_id: str
    used: str
    limit: str
    projected: str | None = Field(description="usage at period_end at the recent pace")
    rate_per_hour: str | None = Field(description="the recent pace, per hour")
    period_end: str = Field(description="ISO 8601 with offset (UTC)")
    exhausts_at: str | None = Field(
        description="when the limit is reached at the recent pace (now if it is used up); "
                    "null if it lasts the period or without a forecast")
    will_exceed: bool = Field(description="projected reaches the limit")
    window_seconds: int = Field(description="how far back the pace was measured (0: none)")
    points: int = Field(description="readings the forecast had")
    reason: str | None


class ForecastOut(BaseModel):
    """Forecasts of the budgets declared for one scope."""

    scope: str
    forecasts: list[BudgetForecastOut]


class LimitForecastOut(BaseModel):
    """The dashboard's forecast of one budget (see ``BudgetForecastOut``)."""

    projected: str | None
    period_end: str
    exhausts_at: str | None
    will_exceed: bool
    window_seconds: int


class TreeLimitOut(LimitOut):
    """A limit in the dashboard's tree, with its forecast (null for rate limits)."""

    forecast: LimitForecastOut | None


class TreeNodeOut(BaseModel):
    scope: str
    level: Literal["org", "team", "user", "agent"]
    team: str | None
    user: str | None
    agent: str | None
    parent: str | None
    limits: list[TreeLimitOut]


class AlertDeliveryOut(BaseModel):
    id: str
    scope: str
    metric: str
    period: str
    period_id: str
    threshold: int
    occurred_ms: int
    sink: str
    state: str
    attempts: int
    last_error: str


class UiTreeOut(BaseModel):
    """The dashboard's view of one org: every scope with live counters (or declared in the
    policy), the limits closest to their limit, and with a database the latest alerts."""

    org: str
    generated_at: float
    timezone: str = Field(description="the org's IANA timezone: its periods, resets and "
                          "trend days are in it, and the page shows every time in it")
    store: bool
    scopes: list[TreeNodeOut]
    top: list[TreeLimitOut]
    alerts: list[AlertDeliveryOut] | None = Field(description="null without a database")
    alerts_error: str | None


class HealthOut(BaseModel):
    status: str


class ReconcileOrgOut(BaseModel):
    """One org's reconciliation as the sidecar's last pass saw it."""

    org: str
    lease_holder: str = Field(description="Holder id (host:pid:random) of the org's reconcile "
                              "lease; empty when nobody holds it.")
    held_here: bool = Field(description="Whether this process holds the lease.")
    lag_seconds: float | None = Field(description="Seconds since the org's last completed "
                                      "reconcile pass, by any process; null: never.")


class ReconcileOut(BaseModel):
    """The in-process reconciler (``serve --db``): who reconciles what, how far behind."""

    enabled: bool
    holder: str = Field("", description="This process's holder id.")
    outbox_backlog: int | None = Field(None, description="Pending alert deliveries (webhooks) "
                                       "in the outbox; null: not known (database down).")
    age_seconds: float | None = Field(None, description="Age of this information (refreshed "
                                      "after every reconcile pass).")
    orgs: list[ReconcileOrgOut] = Field(default_factory=list,
                                        description="At most 200 orgs.")
    detail: str = Field("", description="Why the last pass failed (Redis or the database "
                        "down); empty when it went through.")


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    detail: str = ""
    reconcile: ReconcileOut | None = Field(None, description="With --db (informative: "
                                           "readiness does not depend on the database).")


class ProblemOut(BaseModel):
    """RFC 9457 problem details with a stable ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str
    detail: str = ""
    request_id: str = ""
    errors: list[dict[str, Any]] = []
