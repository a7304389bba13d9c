"""Standard Webhooks signatures (https://www.standardwebhooks.com), HMAC-SHA256.

A message is signed over ``f"{msg_id}.{timestamp}.{body}"`` and the result travels in three
headers: ``webhook-id`` (the stable event id receivers dedupe on), ``webhook-timestamp``
(integer seconds since the epoch) and ``webhook-signature`` (``v1,<base64 signature>``; a
receiver accepts the message if any of the space-separated ``v1`` entries matches).

Secrets are ``whsec_<base64 key>`` strings (see :func:`generate_secret`); a plain string is also
accepted and used as its UTF-8 bytes. No function here ever puts a secret in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from ...errors import BudgetLimiterError

__all__ = [
    "SECRET_PREFIX",
    "InvalidSignature",
    "generate_secret",
    "headers",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"


class InvalidSignature(BudgetLimiterError, ValueError):
    """A webhook failed verification (bad or missing signature, stale or bad timestamp)."""


def _key(secret: str | bytes) -> bytes:
    """The HMAC key of ``secret`` (``whsec_`` base64, raw string, or raw bytes)."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret: the part after 'whsec_' is not valid "
                             "base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret in the ``whsec_<base64>`` format."""
    if not 24 <= nbytes <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The signature header value ``v1,<base64(HMAC-SHA256(key, "id.ts.body"))>``."""
    digest = _digest(_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def _header(hdrs: Mapping[str, str], name: str) -> str:
    for key, value in hdrs.items():
        if key.lower() == name:
            return value
    raise InvalidSignature(f"missing header {name}")


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes, *,
           tolerance_s: int = 300, now: float | None = None) -> None:
    """Check a received webhook; raise :class:`InvalidSignature` unless it is authentic.

    ``headers`` may use any case for its names. The timestamp must lie within
    ``tolerance_s`` seconds of ``now`` (default: the current time) in either direction, which
    bounds replays; the signature is compared in constant time.
    """
    key = _key(secret)
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp").strip()
    if not raw_ts.isdigit() or len(raw_ts) > 12:
        raise InvalidSignature("webhook-timestamp is not an integer number of seconds")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise InvalidSignature("webhook-timestamp is outside the tolerance window")
    expected = base64.b64encode(_digest(key, msg_id, timestamp, body))
    matched = False
    for entry in _header(headers, "webhook-signature").split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("utf-8"), expected):
            matched = True  # no early exit: the time taken does not depend on which matched
    if not matched:
        raise InvalidSignature("no matching v1 signature")
