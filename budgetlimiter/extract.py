"""Read token usage out of what an agent call returned.

:func:`extract_usage` understands, as dicts or as SDK objects (attributes):

- OpenAI-compatible chat/completions: ``usage.prompt_tokens`` / ``completion_tokens``, with
  ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``;
- OpenAI Responses: ``usage.input_tokens`` / ``output_tokens``, with
  ``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens`` (also
  the ``response.completed`` stream event, whose ``response`` carries the usage);
- Anthropic messages: ``usage.input_tokens`` / ``output_tokens`` plus
  ``cache_read_input_tokens`` and ``cache_creation_input_tokens``;
- a plain dict or object for custom agents: ``{"input_tokens": .., "output_tokens": ..,
  "invocations": .., "cost": "0.02"}`` (``cost`` in USD, Decimal/str/int, overrides pricing);
- a :class:`~budgetlimiter.usage.Usage`, returned as is.

Token accounting (the same for every provider): ``input_tokens`` counts *every* prompt token,
cached ones included (Anthropic's cache reads and writes are added to its ``input_tokens``,
which excludes them); ``output_tokens`` counts every generated token, reasoning included. When a
response reports cached, cache-write or reasoning tokens, the result is a :class:`ProviderUsage`
that also says how many of them there were, and
:meth:`Pricing.cost_micros <budgetlimiter.policy.model.Pricing.cost_micros>` prices the cached
input tokens at ``cached_input_per_million``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import InvalidAmount
from .usage import Usage, check_count

Extractor = Callable[[Any], "Usage | None"]


@dataclass(frozen=True, slots=True)
class ProviderUsage(Usage):
    """A :class:`Usage` with the provider's token details.

    ``cached_input_tokens`` (read from a prompt cache) and ``cache_write_tokens`` (written to
    it, Anthropic) are counted *within* ``input_tokens``; ``reasoning_tokens`` within
    ``output_tokens``. Only ``cached_input_tokens`` changes the price (see the module doc).
    """

    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        Usage.__post_init__(self)
        for name in ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise InvalidAmount("cached and cache-write tokens exceed input_tokens")
        if self.reasoning_tokens > self.output_tokens:
            raise InvalidAmount("reasoning_tokens exceed output_tokens")


def get(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` for objects; ``None`` when missing."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _n(value: Any) -> int:
    return 0 if value is None else check_count("token count", value)


def usage_counts(usage: Any) -> dict[str, int] | None:
    """The token counts a provider ``usage`` member reports, normalised, or ``None``.

    Keys (only those reported): ``input``, ``output``, ``cached``, ``cache_write``,
    ``reasoning``, with ``input`` including cached and cache-write tokens. Used by the
    streaming guard, which merges the partial usages of stream events.
    """
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return None
    counts: dict[str, int] = {}
    prompt, completion = get(usage, "prompt_tokens"), get(usage, "completion_tokens")
    if prompt is not None or completion is not None:  # OpenAI chat/completions
        if prompt is not None:
            counts["input"] = _n(prompt)
        if completion is not None:
            counts["output"] = _n(completion)
        details = get(usage, "prompt_tokens_details")
        if get(details, "cached_tokens") is not None:
            counts["cached"] = _n(get(details, "cached_tokens"))
        details = get(usage, "completion_tokens_details")
        if get(details, "reasoning_tokens") is not None:
            counts["reasoning"] = _n(get(details, "reasoning_tokens"))
        return counts
    inp, out = get(usage, "input_tokens"), get(usage, "output_tokens")
    read, write = get(usage, "cache_read_input_tokens"), get(usage, "cache_creation_input_tokens")
    if inp is None and out is None and read is None and write is None:
        return None
    if out is not None:
        counts["output"] = _n(out)
    if read is not None or write is not None:  # Anthropic: input_tokens excludes the cache
        counts["cached"], counts["cache_write"] = _n(read), _n(write)
        if inp is not None:
            counts["input"] = _n(inp) + counts["cached"] + counts["cache_write"]
        return counts
    if inp is not None:  # OpenAI Responses (or Anthropic without caching): cache included
        counts["input"] = _n(inp)
    details = get(usage, "input_tokens_details")
    if get(details, "cached_tokens") is not None:
        counts["cached"] = _n(get(details, "cached_tokens"))
    details = get(usage, "output_tokens_details")
    if get(details, "reasoning_tokens") is not None:
        counts["reasoning"] = _n(get(details, "reasoning_tokens"))
    return counts


_FIELDS = (
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "prompt_tokens_details",
    "completion_tokens_details", "input_tokens_details", "output_tokens_details",
)


def usage_fields(usage: Any) -> dict[str, Any]:
    """The known token fields a ``usage`` member reports (``None`` ones left out), as a plain
    dict with the ``*_details`` reduced to ``cached_tokens`` / ``reasoning_tokens``: partial
    usages merge with ``dict.update`` and normalise with :func:`usage_counts`."""
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return {}
    found: dict[str, Any] = {}
    for name in _FIELDS:
        value = get(usage, name)
        if name.endswith("_details") and value is not None:
            value = {k: get(value, k) for k in ("cached_tokens", "reasoning_tokens")
                     if get(value, k) is not None}
        if value is not None:
            found[name] = value
    return found


def usage_from_counts(counts: Mapping[str, int], *, invocations: int = 1,
                      cost: Decimal | None = None) -> Usage:
    """A :class:`Usage` (a :class:`ProviderUsage` when details are non-zero) from counts."""
    inp, out = counts.get("input", 0), counts.get("output", 0)
    cached, write = counts.get("cached", 0), counts.get("cache_write", 0)
    reasoning = counts.get("reasoning", 0)
    if cached or write or reasoning:
        return ProviderUsage(inp, out, invocations, cost, cached_input_tokens=cached,
                             cache_write_tokens=write, reasoning_tokens=reasoning)
    return Usage(inp, out, invocations, cost)


def _custom(obj: Any) -> Usage | None:
    """A custom agent's own dict/object: token fields plus optional invocations and cost."""
    counts = usage_counts(obj) or {}
    invocations, cost = get(obj, "invocations"), get(obj, "cost")
    if not counts and invocations is None and cost is None:
        return None
    if cost is not None and not isinstance(cost, Decimal):
        cost = Decimal(cost) if isinstance(cost, (str, int)) and not isinstance(cost, bool) \
            else cost  # a float is refused by Usage with a clear error
    return usage_from_counts(counts, invocations=1 if invocations is None else invocations,
                             cost=cost)


def extract_usage(result: Any) -> Usage | None:
    """Usage from a return value (see the module doc for the shapes); ``None`` when the value
    reports nothing, in which case the guards commit their estimate."""
    if isinstance(result, Usage):
        return result
    if result is None or isinstance(result, (str, bytes, int, float)):
        return None
    usage = get(result, "usage")
    if usage is None:
        response = get(result, "response")  # Responses API stream event
        usage = get(response, "usage") if response is not None else None
    if usage is not None:
        counts = usage_counts(usage)
        return usage_from_counts(counts) if counts else None
    return _custom(result)


def field_extractor(*, input: str | None = None, output: str | None = None,
                    cost: str | None = None, invocations: str | None = None) -> Extractor:
    """An extractor for a custom agent's result, from dotted paths (``"stats.tokens_in"``)
    into dicts or attributes; a missing path reads as zero (cost: priced by the policy)."""

    def walk(obj: Any, path: str | None) -> Any:
        if path is None:
            return None
        for part in path.split("."):
            obj = get(obj, part)
            if obj is None:
                return None
        return obj

    def extractor(result: Any) -> Usage | None:
        found = {"input_tokens": walk(result, input), "output_tokens": walk(result, output),
                 "cost": walk(result, cost), "invocations": walk(result, invocations)}
        if all(value is None for value in found.values()):
            return None
        return _custom({k: v for k, v in found.items() if v is not None})

    return extractor
