"""The durable SQL record of usage, alerts and history (SQLite or PostgreSQL).

Needs the ``sql`` extra (SQLAlchemy); PostgreSQL also needs the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

from .migrations import MIGRATIONS, Migration
from .records import Adjustment, AlertEvent, Delivery, UsageRow
from .sql import FlushOutcome, Store

__all__ = [
    "MIGRATIONS",
    "Adjustment",
    "AlertEvent",
    "Delivery",
    "FlushOutcome",
    "Migration",
    "Store",
    "UsageRow",
]
