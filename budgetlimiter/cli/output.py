"""Rendering for the CLI: tables with state colours, bars, sparklines, json and csv.

Colours are applied with ``click.style``; ``click.echo`` strips them when the output is not a
terminal, so piped output is plain.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import click

STATE_COLOURS = {"ok": "green", "soft_exceeded": "yellow", "blocked": "red"}
SPARKS = "▁▂▃▄▅▆▇█"


def bar(fraction: float, width: int = 20) -> str:
    """A horizontal bar, 1/8 character resolution."""
    fraction = max(0.0, min(1.0, fraction))
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    return ("█" * full + partial).ljust(width)


def sparkline(values: Sequence[float]) -> str:
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    # a negative value (a period with a credit larger than its usage) is drawn as zero
    return "".join(SPARKS[min(7, max(0, int(v / top * 7.999)))] for v in values)


def colour_state(state: str, text: str | None = None) -> str:
    return click.style(text if text is not None else state, fg=STATE_COLOURS.get(state))


def table(rows: Sequence[dict[str, Any]], colour_column: str | None = "state") -> str:
    """Plain aligned table; the ``state`` column is coloured."""
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    widths[-1] = 0  # the last column is not padded: no trailing spaces
    lines = ["  ".join(click.style(c.ljust(w), bold=True) for c, w in zip(cols, widths,
                                                                            strict=True))]
    for row in cells:
        parts = []
        for col, value, width in zip(cols, row, widths, strict=True):
            # padding after the colour codes: the line's trailing spaces can be stripped
            pad = " " * (width - len(value))
            parts.append((colour_state(value) if col == colour_column else value) + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render(rows: Sequence[dict[str, Any]], fmt: str, text: str | None = None) -> str:
    """``rows`` as table (or ``text`` when given), json or csv."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            # booleans as in JSON (true/false), not Python's True/False
            writer.writerows({k: str(v).lower() if isinstance(v, bool) else v
                              for k, v in row.items()} for row in rows)
        return buf.getvalue().rstrip("\n")
    return text if text is not None else table(rows)


def limit_row(s: Any, with_bar: bool = True, exhausts: str | None = None) -> dict[str, Any]:
    """One LimitStatus as a display row (money as decimal USD strings); ``exhausts``: the
    forecast's cell (see :func:`budgetlimiter.cli.forecast.exhausts`), no column if None."""
    d = s.to_dict()
    row = {
        "scope": d["scope"],
        "metric": d["metric"],
        "period": d["period"],
        "used": d["used"],
        "reserved": d["reserved"],
        "limit": d["limit"],
        # a rate admits up to its burst at once: without it "remaining 30 of limit 10" reads
        # like a bug (empty for budgets)
        "burst": "" if d.get("burst") is None else d["burst"],
        "remaining": d["remaining"],
        "percent": d["percent"],
        "resets_at": d["resets_at"],
    }
    if exhausts is not None:
        row["exhausts"] = exhausts
    row["mode"] = d["mode"]
    row["state"] = d["state"]
    if with_bar:
        row["bar"] = bar(min(1.0, s.percent / 100), 12)
    return row
