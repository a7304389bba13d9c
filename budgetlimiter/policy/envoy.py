"""The policy's ``envoy:`` section: how Envoy's rate limit requests map onto budgetlimiter.

Envoy (and the gateways built on it: Envoy AI Gateway, Istio) describe a request to an external
rate limit service as *descriptors*: lists of ``key=value`` entries, each with an optional
``hits_addend``. This section says which entry keys carry the org, team, user, agent (model)
and request id, which ``domain`` values are accepted, which metric a ``hits_addend`` counts,
and which entry marks the call Envoy makes when the response stream is done. It is validated
like the rest of the policy: unknown fields are errors and every error names its field.
:mod:`budgetlimiter.envoy` applies it (no gRPC is needed to load a policy).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator
from typing_extensions import Self

from .model import AgentId, _Model

#: What a descriptor's ``hits_addend`` counts: a number of requests (invocations), tokens, or
#: cost in micro-USD.
HitsMetric = Literal["requests", "input_tokens", "output_tokens", "total_tokens", "micro_usd"]
HITS_METRICS: tuple[str, ...] = (
    "requests", "input_tokens", "output_tokens", "total_tokens", "micro_usd")
#: Envoy itself refuses a hits_addend above one billion.
ENVOY_MAX_HITS_ADDEND = 1_000_000_000

EntryKey = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Count = Annotated[StrictInt, Field(ge=0, le=ENVOY_MAX_HITS_ADDEND)]


class EnvoyEntries(_Model):
    """Descriptor entry keys (``key`` of Envoy's ``descriptor_key`` / ``generic_key`` actions)
    that carry each part of the subject. ``team``, ``user`` and ``request_id`` are optional
    in a request; ``null`` here means the key is never read."""

    org: EntryKey = "org"
    team: EntryKey | None = "team"
    user: EntryKey | None = "user"
    agent: EntryKey = "model"
    request_id: EntryKey | None = "request_id"
    #: an entry whose value names the metric of its descriptor's hits_addend (one of
    #: ``requests``, ``input_tokens``, ``output_tokens``, ``total_tokens``, ``micro_usd``);
    #: without it a descriptor's hits_addend counts :attr:`EnvoyMapping.hits_addend`
    metric: EntryKey | None = "usage"


class StreamDone(_Model):
    """The entry that marks Envoy's stream-done call (a rate limit with
    ``apply_on_stream_done: true`` whose actions add ``generic_key`` ``key: value``)."""

    key: EntryKey = "phase"
    value: EntryKey = "done"


class Estimate(_Model):
    """The least that a request-time call reserves; descriptors may ask for more."""

    input_tokens: Count = 0
    output_tokens: Count = 0


class EnvoyMapping(_Model):
    """How ``ShouldRateLimit`` requests map onto subjects and usage (see the README's
    "Behind Envoy")."""

    #: accepted ``RateLimitRequest.domain`` values (the filter's ``domain``)
    domains: Annotated[tuple[EntryKey, ...], Field(min_length=1)] = ("budgetlimiter",)
    entries: EnvoyEntries = Field(default_factory=EnvoyEntries)
    stream_done: StreamDone = Field(default_factory=StreamDone)
    #: what a hits_addend counts when its descriptor names no metric
    hits_addend: HitsMetric = "total_tokens"
    estimate: Estimate = Field(default_factory=Estimate)
    #: the agent of requests without an agent entry (``null``: such a request is invalid)
    default_agent: AgentId | None = None
    #: a larger hits_addend is refused (INVALID_ARGUMENT) before anything is counted
    max_hits_addend: Annotated[StrictInt, Field(ge=1, le=ENVOY_MAX_HITS_ADDEND)] = 100_000_000

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("domains must not repeat a domain")
        return value

    @model_validator(mode="after")
    def _distinct_keys(self) -> Self:
        seen: dict[str, str] = {}
        roles = [(name, getattr(self.entries, name)) for name in EnvoyEntries.model_fields]
        roles.append(("stream_done.key", self.stream_done.key))
        for role, key in roles:
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"entries: {role} and {seen[key]} both read the descriptor key {key!r}; "
                    "each part of the request needs a key of its own")
            seen[key] = role
        return self


__all__ = ["HITS_METRICS", "EnvoyEntries", "EnvoyMapping", "Estimate", "HitsMetric",
           "StreamDone"]
