"""Recorded provider payloads (tests/payloads/*.json) as dicts and as SDK-like objects."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PAYLOADS = Path(__file__).resolve().parent / "payloads"


def load(name: str) -> Any:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def as_object(value: Any) -> Any:
    """A dict tree as attribute objects, like the OpenAI / Anthropic SDKs' pydantic models."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: as_object(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_object(v) for v in value]
    return value


def sse(events: list[Any], *, anthropic: bool = False, done: bool = True) -> list[bytes]:
    """Events encoded as the server-sent-event frames the providers send."""
    frames = []
    for event in events:
        head = f"event: {event['type']}\n" if anthropic else ""
        frames.append(f"{head}data: {json.dumps(event)}\n\n".encode())
    if done and not anthropic:
        frames.append(b"data: [DONE]\n\n")
    return frames
