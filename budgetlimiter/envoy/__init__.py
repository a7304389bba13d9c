"""budgetlimiter as Envoy's external rate limit service (``envoy.service.ratelimit.v3``).

Envoy-based gateways (Envoy AI Gateway, Istio) call ``ShouldRateLimit`` over gRPC; each call
is one atomic check of the whole org → team → user → agent hierarchy. Needs the ``envoy``
extra (``pip install 'budgetlimiter[envoy]'``): grpcio, Envoy's generated protobuf classes
(``xds-protos``) and the standard gRPC health service.

* :mod:`.mapping`: descriptors → subject and usage (sans-I/O);
* :mod:`.response`: decision → ``RateLimitResponse`` (sans-I/O);
* :mod:`.service`: the grpc.aio servicer; :mod:`.serving`: running it.

The mapping is the policy's ``envoy:`` section (:class:`~budgetlimiter.policy.EnvoyMapping`).
"""

from __future__ import annotations

from ..policy.envoy import EnvoyMapping
from .mapping import Call, InvalidRequest, parse_request
from .service import SERVICE_NAME, RateLimitServicer, add_ratelimit_servicer
from .serving import GrpcService, serve_grpc, sidecar_hook

__all__ = [
    "SERVICE_NAME",
    "Call",
    "EnvoyMapping",
    "GrpcService",
    "InvalidRequest",
    "RateLimitServicer",
    "add_ratelimit_servicer",
    "parse_request",
    "serve_grpc",
    "sidecar_hook",
]
