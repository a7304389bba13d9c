"""Running the rate limit service: a grpc.aio server with the standard health service, on
its own (:func:`serve_grpc`) or inside the HTTP sidecar's event loop (:func:`sidecar_hook`,
``budgetlimiter serve --grpc-port``), sharing its limiter and policy."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..aio import AsyncBudgetLimiter
from ..policy.envoy import EnvoyMapping
from ..server.config import Token
from .service import SERVICE_NAME, RateLimitServicer, add_ratelimit_servicer

if TYPE_CHECKING:
    from ..server.app import Server
    from ..server.metrics import Metrics

log = logging.getLogger("budgetlimiter.envoy")
_SERVING = health_pb2.HealthCheckResponse.SERVING


class GrpcService:
    """A started grpc.aio server answering ``ShouldRateLimit`` and ``grpc.health.v1``.

    ``port`` is the bound port (useful with port 0). :meth:`stop` marks the health service
    NOT_SERVING, lets in-flight calls finish within ``grace`` seconds, then flushes what the
    servicer still holds. The limiter is the caller's: it is not closed here.
    """

    def __init__(self, server: grpc.aio.Server, servicer: RateLimitServicer,
                 health_servicer: Any, port: int) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.port = port

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, finish in-flight ones, flush pending stream-done commits."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.servicer.aclose()


async def serve_grpc(limiter: AsyncBudgetLimiter, *, host: str = "127.0.0.1", port: int = 0,
                     mapping: EnvoyMapping | None = None, tokens: Sequence[Token] = (),
                     options: Sequence[tuple[str, Any]] = (),
                     metrics: Metrics | None = None) -> GrpcService:
    """Start the rate limit service (and the health service) on ``host:port``.

    Call it from the event loop that runs ``limiter``. Without ``tokens`` the service is
    open: bind it to loopback, or pass tokens like the HTTP sidecar's (``name:secret:write``
    parsed by :func:`budgetlimiter.server.parse_tokens`). ``metrics`` (a
    :class:`~budgetlimiter.server.metrics.Metrics`) counts calls, decisions and settles.
    """
    # without SO_REUSEPORT (grpc's default is on) a port another process holds is an error
    # here, not two servers silently splitting the traffic
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options])
    servicer = add_ratelimit_servicer(server, limiter, mapping, tokens, metrics)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address} for gRPC: {exc}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _SERVING)
    log.info("envoy rate limit service started", extra={"grpc": f"{host}:{bound}",
                                                        "auth": bool(tokens)})
    return GrpcService(server, servicer, health_servicer, bound)


def sidecar_hook(host: str, port: int, tokens: Sequence[Token] = (),
                 on_bound: Callable[[int], None] | None = None
                 ) -> Callable[[Server], AbstractAsyncContextManager[None]]:
    """A lifespan hook for :class:`budgetlimiter.server.app.Server`: the gRPC service runs
    in the sidecar's event loop, on its limiter (so with its policy, its reloads and its
    client options) and its metrics. ``on_bound`` receives the port bound (with port 0:
    the one the system chose)."""

    @contextlib.asynccontextmanager
    async def run(sidecar: Server) -> AsyncIterator[None]:
        service = await serve_grpc(sidecar.require_limiter(), host=host, port=port,
                                   tokens=tokens, metrics=sidecar.metrics)
        if on_bound is not None:
            on_bound(service.port)
        try:
            yield
        finally:
            await service.stop()

    return run


__all__ = ["GrpcService", "serve_grpc", "sidecar_hook"]
