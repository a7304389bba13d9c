"""A fake OpenAI-compatible upstream that replays recorded response payloads.

``POST /v1/chat/completions`` and ``POST /v1/responses`` answer with the payload files of a
directory (``openai_chat_completion.json``, ``openai_chat_stream.json``,
``openai_responses.json``, ``openai_responses_stream.json``; the ``*_stream`` files are lists
of events, sent as server-sent events when the request says ``"stream": true``). Like OpenAI,
a chat stream carries the final usage chunk only with ``stream_options.include_usage``. Every
request body is kept in ``app.state.requests``. For tests and local demos of the proxy.

A request whose ``metadata`` says ``{"fake_upstream": "reset_after=N"}`` gets a stream that
breaks after N events: the connection is dropped in the middle of the body, as when a
provider's connection is reset.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PAYLOADS = Path(__file__).resolve().parent.parent / "tests" / "payloads"
FILES = {"/v1/chat/completions": "openai_chat", "/v1/responses": "openai_responses"}


def create_upstream(payloads: Path = PAYLOADS) -> Starlette:
    """The fake upstream app, replaying the payloads found in ``payloads``."""

    def load(name: str) -> Any:
        return json.loads((payloads / f"{name}.json").read_text())

    async def answer(request: Request) -> Response:
        body = await request.json()
        request.app.state.requests.append(body)
        base = FILES[request.url.path]
        if not body.get("stream"):
            name = "openai_chat_completion" if base == "openai_chat" else base
            return JSONResponse(load(name))
        events = load(f"{base}_stream")
        if base == "openai_chat" and not (body.get("stream_options") or {}).get("include_usage"):
            events = [e for e in events if e["choices"]]

        hint = str((body.get("metadata") or {}).get("fake_upstream", ""))
        reset_after = int(hint.split("=", 1)[1]) if hint.startswith("reset_after=") else -1

        async def sse() -> AsyncIterator[bytes]:
            for i, event in enumerate(events):
                if i == reset_after:  # the server drops the connection mid-body
                    raise ConnectionResetError("fake upstream: connection reset mid-stream")
                head = f"event: {event['type']}\n" if "type" in event else ""
                yield f"{head}data: {json.dumps(event)}\n\n".encode()
            if base == "openai_chat":
                yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    app = Starlette(routes=[Route(path, answer, methods=["POST"]) for path in FILES])
    app.state.requests = []
    return app


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--payloads", type=Path, default=PAYLOADS)
    args = parser.parse_args()
    uvicorn.run(create_upstream(args.payloads), host="127.0.0.1", port=args.port)
