"""Fault injection at the clients' one I/O seam (``_execute``), for script calls only."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from budgetlimiter.engine.calls import ScriptCall


def scripts_only(client: Any, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An ``_execute`` that sends script calls to ``fn`` and everything else (pipelines,
    background flows, script loads) to the client's own ``_execute``."""
    own = type(client)._execute.__get__(client)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(own):
        async def execute_async(request: Any) -> Any:
            if isinstance(request, ScriptCall):
                result = fn(request)
                return await result if inspect.isawaitable(result) else result
            return await own(request)

        return execute_async

    def execute(request: Any) -> Any:
        return fn(request) if isinstance(request, ScriptCall) else own(request)

    return execute
