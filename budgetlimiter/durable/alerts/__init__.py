"""Alert delivery: signed webhooks, callbacks and logs, at-least-once from the outbox.

Threshold crossings and forecast events are recorded once in the durable outbox (one row
per event and sink); :class:`Deliverer` delivers them with retries and backoff. Receivers
dedupe on the stable event id and check the Standard Webhooks signature with :func:`verify`.
"""

from __future__ import annotations

from .delivery import Deliverer, DeliveryStats, Outbox
from .signing import InvalidSignature, generate_secret, headers, sign, verify
from .sinks import (
    EVENT_TYPE,
    FORECAST_EVENT_TYPE,
    CallbackSink,
    DeliveryError,
    LogSink,
    Sink,
    WebhookSink,
    encode_payload,
    event_payload,
)

__all__ = [
    "EVENT_TYPE",
    "FORECAST_EVENT_TYPE",
    "CallbackSink",
    "Deliverer",
    "DeliveryError",
    "DeliveryStats",
    "InvalidSignature",
    "LogSink",
    "Outbox",
    "Sink",
    "WebhookSink",
    "encode_payload",
    "event_payload",
    "generate_secret",
    "headers",
    "sign",
    "verify",
]
