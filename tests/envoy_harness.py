"""A running rate limit service for the Envoy tests: an AsyncBudgetLimiter and the grpc.aio
server on an event loop in a background thread, and a real (synchronous) gRPC client built
from the xds-protos stubs, as Envoy would call it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from budgetlimiter import AsyncBudgetLimiter, Subject, parse_policy
from budgetlimiter.envoy import serve_grpc
from budgetlimiter.server.config import Token

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


def descriptor(hits: int | None = None, **entries: str) -> Any:
    """A RateLimitDescriptor with ``entries`` (in order) and an optional hits_addend."""
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
                 for k, v in entries.items()])
    if hits is not None:
        d.hits_addend.value = hits
    return d


class Service:
    """The service under test and a client of it; :meth:`close` stops everything."""

    def __init__(self, policy: str, url: str, *, tokens: tuple[Token, ...] = (),
                 **limiter_kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        limiter_kwargs.setdefault("timeout", 2.0)

        async def build() -> AsyncBudgetLimiter:
            return AsyncBudgetLimiter(parse_policy(policy), url, **limiter_kwargs)

        self.limiter = self.run(build())
        self.grpc = self.run(serve_grpc(self.limiter, tokens=tokens))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, *descriptors: Any, domain: str = "budget", token: str | None = None,
             hits: int = 0) -> Any:
        """One ShouldRateLimit call (raises grpc.RpcError on a gRPC error status)."""
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        return self.stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain=domain, descriptors=list(descriptors),
                                     hits_addend=hits),
            metadata=metadata, timeout=10)

    def limits(self, subject: Subject) -> dict[str, tuple[int | None, int | None]]:
        """``{"scope|metric|period": (used, reserved)}`` of every limit of ``subject``."""
        return {f"{s.scope}|{s.metric.value}|{s.period}": (s.used, s.reserved)
                for s in self.run(self.limiter.status(subject))}

    def close(self) -> None:
        self.channel.close()
        try:
            self.run(self.grpc.stop(0))
            self.run(self.limiter.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
