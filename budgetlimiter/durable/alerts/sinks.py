"""Where alerts go: signed webhooks, a Python callback (billing systems), the log.

A sink delivers one :class:`~budgetlimiter.durable.store.records.AlertEvent` per call and raises on
failure; the :class:`~budgetlimiter.durable.alerts.delivery.Deliverer` retries it later. Delivery is
at-least-once, so receivers dedupe on the event id (the ``webhook-id`` header, ``data.id``).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ...errors import BudgetLimiterError
from ...usage import micros_to_usd
from ..store.records import AlertEvent
from .signing import _key
from .signing import headers as signed_headers

__all__ = [
    "EVENT_TYPE",
    "FORECAST_EVENT_TYPE",
    "CallbackSink",
    "DeliveryError",
    "LogSink",
    "Sink",
    "WebhookSink",
    "encode_payload",
    "event_payload",
]

EVENT_TYPE = "budget.threshold_crossed"
#: the type of a forecast event (:attr:`AlertEvent.is_forecast`)
FORECAST_EVENT_TYPE = "budget.forecast_exceeded"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_RESPONSE = 64 * 1024


class DeliveryError(BudgetLimiterError):
    """A sink could not deliver an event; the message is a short, secret-free reason."""


class Sink(Protocol):
    """Something that receives alert events. ``deliver`` raises on failure."""

    name: str

    def deliver(self, event: AlertEvent, attempt: int) -> None:
        """Deliver ``event``; ``attempt`` counts from 1. Raise if it was not delivered."""
        ...


def _iso_utc(ms: int) -> str:
    when = _EPOCH + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _amount(metric: str, value: int) -> int | str:
    return format(micros_to_usd(value), "f") if metric == "cost" else int(value)


def event_payload(event: AlertEvent) -> dict[str, Any]:
    """The JSON document sent for ``event`` (cost amounts as decimal USD strings)."""
    if event.is_forecast:
        return {
            "type": FORECAST_EVENT_TYPE,
            "timestamp": _iso_utc(event.occurred_ms),
            "data": {
                "id": event.id, "org": event.org, "scope": event.scope,
                "metric": event.metric, "period": event.period, "period_id": event.period_id,
                "projected": _amount(event.metric, event.used),
                "limit": _amount(event.metric, event.limit),
            },
        }
    return {
        "type": EVENT_TYPE,
        "timestamp": _iso_utc(event.occurred_ms),
        "data": {
            "id": event.id,
            "org": event.org,
            "scope": event.scope,
            "metric": event.metric,
            "period": event.period,
            "period_id": event.period_id,
            "threshold": event.threshold,
            "used": _amount(event.metric, event.used),
            "limit": _amount(event.metric, event.limit),
        },
    }


def encode_payload(event: AlertEvent) -> bytes:
    """The exact bytes POSTed for ``event``: compact JSON, sorted keys, UTF-8."""
    return json.dumps(event_payload(event), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Treat redirects as failures: a signed POST must not be replayed somewhere else."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def _safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (they may hold tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class WebhookSink:
    """POSTs each event as signed JSON (Standard Webhooks headers) to ``url``.

    ``webhook-id`` is the event id, the same on every retry. Any 2xx answer means delivered;
    any other status, a redirect, a timeout or a network error raises :class:`DeliveryError`.
    The secret never appears in errors, logs or ``repr``.
    """

    def __init__(self, name: str, url: str, secret: str | bytes, *, timeout: float = 5.0,
                 headers: Mapping[str, str] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must be http(s)://host/..., got {_safe_url(url)!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        _key(secret)  # validate now, not at the first delivery
        self.name = name
        self.url = url
        self.timeout = timeout
        self.extra_headers = dict(headers or {})
        self._secret = secret
        self._clock = clock or time.time
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={_safe_url(self.url)!r}, secret='***')"

    def request(self, event: AlertEvent) -> tuple[dict[str, str], bytes]:
        """The headers and body that :meth:`deliver` would send now (for tests and tools)."""
        body = encode_payload(event)
        hdrs = {k: v for k, v in self.extra_headers.items()
                if k.lower() not in ("content-type", "webhook-id", "webhook-timestamp",
                                     "webhook-signature")}
        hdrs.update({"Content-Type": "application/json", "User-Agent": "budgetlimiter"})
        hdrs.update(signed_headers(self._secret, event.id, int(self._clock()), body))
        return hdrs, body

    def deliver(self, event: AlertEvent, attempt: int) -> None:
        """POST ``event``; raise :class:`DeliveryError` unless the receiver answers 2xx."""
        hdrs, body = self.request(event)
        req = urllib.request.Request(self.url, data=body, headers=hdrs, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read(_MAX_RESPONSE)
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise DeliveryError(f"HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            what = type(reason).__name__ if isinstance(reason, BaseException) else "URLError"
            raise DeliveryError(f"network error: {what}") from None
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed responses
            raise DeliveryError(f"network error: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}")


class CallbackSink:
    """Calls ``fn(event)`` for each event (e.g. a billing system); an exception means retry."""

    def __init__(self, name: str, fn: Callable[[AlertEvent], None]) -> None:
        self.name = name
        self.fn = fn

    def __repr__(self) -> str:
        return f"CallbackSink(name={self.name!r}, fn={getattr(self.fn, '__qualname__', '?')})"

    def deliver(self, event: AlertEvent, attempt: int) -> None:
        """Call the callback with ``event``."""
        self.fn(event)


class LogSink:
    """Logs one structured line per event: ``budget.threshold_crossed {json payload}`` (or
    ``budget.forecast_exceeded``).

    Crossings of 100 % or more and forecasts log at WARNING, the others at INFO. The JSON
    escapes every control character, so an id can never forge extra log lines.
    """

    def __init__(self, name: str = "log", logger: logging.Logger | None = None) -> None:
        self.name = name
        self.logger = logger or logging.getLogger("budgetlimiter.alerts")

    def __repr__(self) -> str:
        return f"LogSink(name={self.name!r}, logger={self.logger.name!r})"

    def deliver(self, event: AlertEvent, attempt: int) -> None:
        """Log ``event``."""
        payload = event_payload(event)
        level = logging.WARNING if event.threshold >= 100 or event.is_forecast else logging.INFO
        self.logger.log(level, "%s %s", payload["type"],
                        json.dumps(payload["data"], separators=(",", ":"), sort_keys=True),
                        extra={"alert": payload})
