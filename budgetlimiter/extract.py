"""Small extractors that read token usage out of what an agent call returned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .usage import Usage


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def extract_usage(result: Any) -> Usage | None:
    """Usage from a return value: a :class:`Usage`, or an OpenAI-compatible or Anthropic
    response (object or dict) with a ``usage`` member. ``None`` when nothing is found."""
    if isinstance(result, Usage):
        return result
    usage = _get(result, "usage")
    if usage is None:
        return None
    inp = _get(usage, "prompt_tokens")
    out = _get(usage, "completion_tokens")
    if inp is None:
        inp = _get(usage, "input_tokens")
        out = _get(usage, "output_tokens")
        # Anthropic reports cache reads/creations separately from input_tokens
        for extra in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            value = _get(usage, extra)
            if isinstance(value, int) and isinstance(inp, int):
                inp += value
    if inp is None and out is None:
        return None
    return Usage(input_tokens=int(inp or 0), output_tokens=int(out or 0))
