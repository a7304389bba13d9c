"""Readings of live counters kept in-process, so a long-lived process (the sidecar, the
reconciler, an application) has the recent history a forecast needs.

Bounded twice: per counter, readings closer together than 1/16 of its forecast window are
not kept and readings older than the window (but the last one before it, which the window's
start is interpolated from) are dropped, so a counter keeps at most ~18 readings; and at
most ``max_series`` counters are kept, the least recently read dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .projection import Point

__all__ = ["SampleBook", "SeriesKey"]

#: (scope, metric, period id): one counter of one period
SeriesKey = tuple[str, str, str]


class SampleBook:
    """Recent readings per counter. Thread-safe (the sidecar reads from its thread pool)."""

    def __init__(self, max_series: int = 20_000) -> None:
        self.max_series = max_series
        self._series: OrderedDict[SeriesKey, list[Point]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, key: SeriesKey, t_ms: int, used: int, window_ms: int) -> None:
        """Keep the reading ``used`` at ``t_ms`` of the counter ``key``."""
        with self._lock:
            points = self._series.get(key)
            if points is None:
                points = self._series[key] = []
                while len(self._series) > self.max_series:
                    self._series.popitem(last=False)
            else:
                self._series.move_to_end(key)
            if points and t_ms - points[-1][0] < window_ms // 16:
                return  # too close to the last kept reading to add information
            points.append((t_ms, used))
            cut = t_ms - window_ms
            while len(points) > 1 and points[1][0] <= cut:
                del points[0]

    def points(self, key: SeriesKey) -> list[Point]:
        """The kept readings of ``key``, oldest first (a copy)."""
        with self._lock:
            return list(self._series.get(key, ()))
