"""OpenTelemetry export of the sidecar's metrics (the ``otel`` extra).

Every metric of ``/metrics`` is bridged to an asynchronous (observable) OTel instrument of
the same name that reads the sidecar's Prometheus registry when the SDK collects, so both
exports show the same numbers: counters as observable counters, gauges (the per-budget
gauges ``budgetlimiter_budget_*`` included) as observable gauges, and each histogram as its
``_count`` and ``_sum`` observable counters (OpenTelemetry has no observable histogram).

The per-budget gauges are computed by :meth:`Server.refresh_gauges`, which a Prometheus
scrape calls; :func:`otel_lifespan` also calls it every ``interval`` seconds, so an OTel-only
deployment keeps them current. Cardinality is bounded the same way (``--gauge-*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")

__all__ = ["OtelBridge", "otel_lifespan"]


class OtelBridge:
    """Observable OTel instruments over the sidecar's Prometheus registry."""

    def __init__(self, server: Server, provider: MeterProvider) -> None:
        self.server = server
        self.meter: Meter = provider.get_meter("budgetlimiter")
        self.names: list[str] = []
        for family in server.metrics.registry.collect():
            self._bridge(family.name, family.type, family.documentation)

    def _samples(self, family_name: str, suffix: str) -> Callable[[CallbackOptions],
                                                                  Iterable[Observation]]:
        registry = self.server.metrics.registry
        wanted = family_name + suffix

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for family in registry.collect():
                if family.name != family_name:
                    continue
                return [Observation(s.value, dict(s.labels)) for s in family.samples
                        if s.name == wanted]
            return []

        return observe

    def _bridge(self, name: str, kind: str, doc: str) -> None:
        if kind == "counter":
            self.meter.create_observable_counter(
                name, callbacks=[self._samples(name, "_total")], description=doc)
            self.names.append(name)
        elif kind == "gauge":
            self.meter.create_observable_gauge(
                name, callbacks=[self._samples(name, "")], description=doc)
            self.names.append(name)
        elif kind == "histogram":
            for part in ("_count", "_sum"):
                self.meter.create_observable_counter(
                    name + part, callbacks=[self._samples(name, part)], description=doc)
                self.names.append(name + part)


def default_provider() -> Any:
    """An SDK ``MeterProvider`` exporting over OTLP/HTTP (configured by the standard
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_METRIC_EXPORT_INTERVAL`` environment variables)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    return SdkMeterProvider(metric_readers=[reader],
                            resource=Resource.create({"service.name": "budgetlimiter"}))


def otel_lifespan(provider: Any | None = None, interval: float = 15.0
                  ) -> Callable[[Server], contextlib.AbstractAsyncContextManager[None]]:
    """A :attr:`Server.lifespan_hooks` entry: bridge the metrics to ``provider`` (default:
    :func:`default_provider`) and refresh the per-budget gauges every ``interval`` s."""

    @contextlib.asynccontextmanager
    async def hook(server: Server) -> AsyncIterator[None]:
        owned = provider is None
        meter_provider: Any = default_provider() if provider is None else provider
        server.otel = OtelBridge(server, meter_provider)

        async def refresh() -> None:
            while True:
                try:
                    await server.refresh_gauges()
                except Exception as exc:  # pragma: no cover - refresh_gauges is best effort
                    log.debug("otel gauge refresh failed: %s", exc)
                await asyncio.sleep(interval)

        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owned:
                meter_provider.shutdown()

    return hook
