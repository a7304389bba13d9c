"""Budget forecasts: where each budget is heading by its period's end (see
:mod:`budgetlimiter.forecast.projection` for the method)."""

from __future__ import annotations

from .flow import History, ScopeForecast, forecast_flow, forecast_limits
from .projection import WINDOW_MS, Forecast, Point, project
from .samples import SampleBook

__all__ = [
    "WINDOW_MS",
    "Forecast",
    "History",
    "Point",
    "SampleBook",
    "ScopeForecast",
    "forecast_flow",
    "forecast_limits",
    "project",
]
