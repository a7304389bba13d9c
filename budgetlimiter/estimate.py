"""Estimates before the call: what a request may use at most, from the request itself.

Output is bounded by the request's ``max_completion_tokens`` / ``max_tokens`` /
``max_output_tokens`` (times ``n`` choices); without one, ``default_output`` is used, which is
*not* a bound, so set a max in strict mode. The prompt is counted with a pluggable tokenizer
(``Callable[[str], int]``): by default :func:`char_tokens`, ``ceil(chars / 4)``, a fair
approximation for English text and code but not an upper bound for every text (CJK, random
ids); :func:`utf8_bytes` is a true upper bound for byte-level BPE tokenizers, and any real
tokenizer (``lambda s: len(enc.encode(s))``) plugs in the same way. Each message adds
``per_message`` tokens of framing, each image ``IMAGE_TOKENS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidInput
from .extract import get
from .usage import Usage

Tokenizer = Callable[[str], int]
PER_MESSAGE_TOKENS = 4
#: reserved per image / file part: above the largest image cost of OpenAI (1105 at high
#: detail after resizing) and Anthropic (~1600 for a 1.15 megapixel image)
IMAGE_TOKENS = 1600
DEFAULT_OUTPUT_TOKENS = 4096


def char_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``: the default, approximate token count."""
    return -(-len(text) // 4)


def utf8_bytes(text: str) -> int:
    """Bytes of ``text`` in UTF-8: an upper bound on byte-level BPE token counts."""
    return len(text.encode("utf-8"))


class _Counter:
    def __init__(self, tokenizer: Tokenizer | None, per_message: int) -> None:
        self.tokenize = tokenizer or char_tokens
        self.per_message = per_message
        self.texts: list[str] = []
        self.fixed = 0

    def text(self, value: Any) -> None:
        if isinstance(value, str):
            self.texts.append(value)
        elif value is not None:
            self.texts.append(json.dumps(value, default=str, separators=(",", ":")))

    def content(self, content: Any) -> None:
        """A message content: a string, or a list of typed parts (any provider's shape)."""
        if content is None or isinstance(content, str):
            self.text(content)
            return
        if not isinstance(content, list):
            self.text(content)
            return
        for part in content:
            if isinstance(part, str):
                self.text(part)
                continue
            kind = str(get(part, "type") or "")
            if "image" in kind or kind in ("file", "input_file", "document"):
                self.fixed += IMAGE_TOKENS
            elif get(part, "text") is not None:
                self.text(get(part, "text"))
            elif kind == "tool_result":
                self.content(get(part, "content"))
            elif kind == "tool_use":
                self.text(get(part, "name"))
                self.text(get(part, "input"))
            else:
                self.text(part)

    def message(self, message: Any) -> None:
        self.fixed += self.per_message
        self.text(get(message, "name"))
        self.content(get(message, "content"))
        for call in get(message, "tool_calls") or ():
            self.text(get(call, "function"))

    def total(self) -> int:
        return self.fixed + sum(self.tokenize(t) for t in self.texts if t)


def _max_output(request: Mapping[str, Any], keys: tuple[str, ...], default: int) -> int:
    for key in keys:
        value = request.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"{key} must be a non-negative integer, got {value!r}")
            return value
    return default


def _choices(request: Mapping[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def estimate_openai_chat(request: Mapping[str, Any], *, tokenizer: Tokenizer | None = None,
                         per_message: int = PER_MESSAGE_TOKENS,
                         default_output: int = DEFAULT_OUTPUT_TOKENS) -> Usage:
    """Estimate of an OpenAI-compatible chat/completions request body (``messages``, tools,
    ``max_completion_tokens`` / ``max_tokens``, ``n``). Legacy ``prompt`` bodies work too."""
    counter = _Counter(tokenizer, per_message)
    for message in request.get("messages") or ():
        counter.message(message)
    counter.content(request.get("prompt"))
    counter.text(request.get("tools") or request.get("functions"))
    out = _max_output(request, ("max_completion_tokens", "max_tokens"), default_output)
    return Usage(input_tokens=counter.total(), output_tokens=out * _choices(request))


def estimate_openai_responses(request: Mapping[str, Any], *,
                              tokenizer: Tokenizer | None = None,
                              per_message: int = PER_MESSAGE_TOKENS,
                              default_output: int = DEFAULT_OUTPUT_TOKENS) -> Usage:
    """Estimate of an OpenAI Responses request (``instructions``, ``input`` as a string or a
    list of items, tools, ``max_output_tokens``)."""
    counter = _Counter(tokenizer, per_message)
    counter.text(request.get("instructions"))
    items = request.get("input")
    if isinstance(items, list):
        for item in items:
            if get(item, "content") is not None or get(item, "role") is not None:
                counter.message(item)
            else:  # function_call_output and other items
                counter.fixed += per_message
                counter.text(get(item, "output") or get(item, "arguments") or item)
    else:
        counter.content(items)
    counter.text(request.get("tools"))
    out = _max_output(request, ("max_output_tokens",), default_output)
    return Usage(input_tokens=counter.total(), output_tokens=out)


def estimate_openai(request: Mapping[str, Any], **kwargs: Any) -> Usage:
    """:func:`estimate_openai_chat` for ``messages`` bodies, else
    :func:`estimate_openai_responses`."""
    if "messages" in request or "prompt" in request:
        return estimate_openai_chat(request, **kwargs)
    return estimate_openai_responses(request, **kwargs)


def estimate_anthropic(request: Mapping[str, Any], *, tokenizer: Tokenizer | None = None,
                       per_message: int = PER_MESSAGE_TOKENS,
                       default_output: int = DEFAULT_OUTPUT_TOKENS) -> Usage:
    """Estimate of an Anthropic messages request (``system``, ``messages``, tools,
    ``max_tokens``, which the API requires; thinking budgets are within it)."""
    counter = _Counter(tokenizer, per_message)
    counter.content(request.get("system"))
    for message in request.get("messages") or ():
        counter.message(message)
    counter.text(request.get("tools"))
    out = _max_output(request, ("max_tokens",), default_output)
    return Usage(input_tokens=counter.total(), output_tokens=out)


def estimate_text(text: str, *, max_output: int, tokenizer: Tokenizer | None = None) -> Usage:
    """Estimate of a plain prompt string (custom agents)."""
    return Usage(input_tokens=(tokenizer or char_tokens)(text), output_tokens=max_output)


def text_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    """Tokens of ``text`` with ``tokenizer`` (default :func:`char_tokens`)."""
    return (tokenizer or char_tokens)(text) if text else 0


__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "IMAGE_TOKENS",
    "PER_MESSAGE_TOKENS",
    "Tokenizer",
    "char_tokens",
    "estimate_anthropic",
    "estimate_openai",
    "estimate_openai_chat",
    "estimate_openai_responses",
    "estimate_text",
    "text_tokens",
    "utf8_bytes",
]
