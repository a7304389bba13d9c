"""The table, the goals, the JSON file and the optional chart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Result


@dataclass
class Goal:
    name: str
    value: float | None
    target: str
    passed: bool | None  #: None when a scenario it needs did not run
    detail: str

    @property
    def status(self) -> str:
        return "N/A" if self.passed is None else ("PASS" if self.passed else "MISS")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target,
                "status": self.status, "detail": self.detail}


def _rate(results: dict[str, Result], name: str) -> float | None:
    r = results.get(name)
    return r.rate if r is not None and not r.skipped and r.rate > 0 else None


def _ratio_goal(results: dict[str, Result], name: str, num: str, den: str,
                factor: float) -> Goal:
    a, b = _rate(results, num), _rate(results, den)
    target = f"{num} >= {factor:g} x {den}"
    if a is None or b is None:
        return Goal(name, None, target, None, "not measured in this run")
    ratio = a / b
    return Goal(name, round(ratio, 3), target, ratio >= factor,
                f"{a:,.0f} / {b:,.0f} = {ratio:.2f}x (need {factor:g}x)")


def goals(results: dict[str, Result]) -> list[Goal]:
    out = [
        _ratio_goal(results, "async-64 vs redis-benchmark", "async-64", "rb-check-c50", 0.5),
        _ratio_goal(results, "async-64 vs raw asyncio", "async-64", "raw-async-64", 4.0),
        _ratio_goal(results, "sync vs raw redis-py", "sync", "raw-sync", 0.9),
    ]
    # against limits at the same concurrency: the async client at 64 tasks against limits'
    # asyncio storage at 64 tasks, the sync client against limits' sync loop
    out.append(_ratio_goal(results, "async-64 vs limits (64 tasks each)", "async-64",
                           "limits-async-64", 3.5))
    out.append(_ratio_goal(results, "sync vs limits (one loop each)", "sync", "limits", 3.5))
    a, b = results.get("async-64"), results.get("raw-async-64")
    if a is None or b is None or a.p99_us is None or b.p99_us is None:
        out.append(Goal("added p99 @64", None, "< 2000 us", None, "not measured in this run"))
    else:
        added = a.p99_us - b.p99_us
        out.append(Goal("added p99 @64", round(added, 1), "p99(async-64) - p99(raw-async-64) "
                        "< 2000 us", added < 2000,
                        f"{a.p99_us:,.0f} - {b.p99_us:,.0f} = {added:,.0f} us"))
    out.append(_ratio_goal(results, "full vs minimal script", "rb-check-c50", "rb-minimal-c50",
                           0.5))
    info = _ratio_goal(results, "full vs minimal (-P 16, info)", "rb-check-P16",
                       "rb-minimal-P16", 0.5)
    out.append(info)
    # the same goals with the optional leases on (not the default, so reported apart)
    out.append(_ratio_goal(results, "[leases] sync vs raw redis-py", "sync-lease", "raw-sync",
                           0.9))
    out.append(_ratio_goal(results, "[leases] async-64 vs raw asyncio", "async-64-lease",
                           "raw-async-64", 4.0))
    out.append(_ratio_goal(results, "[leases] async-64 vs redis-benchmark", "async-64-lease",
                           "rb-check-c50", 0.5))
    a, b = results.get("async-64-lease"), results.get("raw-async-64")
    if a is not None and b is not None and a.p99_us is not None and b.p99_us is not None:
        added = a.p99_us - b.p99_us
        out.append(Goal("[leases] added p99 @64", round(added, 1),
                        "p99(async-64-lease) - p99(raw-async-64) < 2000 us", added < 2000,
                        f"{a.p99_us:,.0f} - {b.p99_us:,.0f} = {added:,.0f} us"))
    out.append(_ratio_goal(results, "envoy-64 vs bare grpc.aio servicer", "envoy-64",
                           "envoy-bare-64", 0.6))
    # the HTTP sidecar under wrk against a bare Starlette endpoint of the same run, measured
    # first and last: the faster of the two is the reference
    bares = [n for n in ("http-bare-64", "http-bare-64-end") if _rate(results, n)]
    bare = max(bares, key=lambda n: _rate(results, n) or 0.0) if bares else "http-bare-64"
    out.append(_ratio_goal(results, "sidecar check vs bare Starlette (wrk, 64 conns)",
                           "http-check-64", bare, 0.6))
    out.append(_ratio_goal(results, "sidecar check, return=minimal, vs bare Starlette",
                           "http-check-min-64", bare, 0.6))
    out.append(_ratio_goal(results, "[leases] sidecar check vs bare Starlette",
                           "http-check-lease-64", bare, 0.8))
    return out


def scan_summary(results: dict[str, Result]) -> dict[str, Any]:
    """Cost per call by depth (server µs from INFO commandstats, and 1/rate) and a linear fit."""
    points: list[dict[str, Any]] = []
    for d in range(1, 6):
        r = results.get(f"depth-{d}")
        if r is None or r.skipped or r.rate <= 0:
            continue
        points.append({"depth": d, "rate": round(r.rate), "us_per_call": round(1e6 / r.rate, 2),
                       "server_us": r.extra.get("server_us_per_decision")})
    summary: dict[str, Any] = {"points": points}
    xs: list[float] = [float(p["depth"]) for p in points if p["server_us"] is not None]
    ys: list[float] = [float(p["server_us"]) for p in points if p["server_us"] is not None]
    if len(xs) >= 2:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        intercept = my - slope * mx
        ss_tot = sum((y - my) ** 2 for y in ys)
        ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
        summary["fit"] = {"server_us_per_budget": round(slope, 2),
                          "server_us_base": round(intercept, 2),
                          "r2": round(1 - ss_res / ss_tot, 3) if ss_tot else 1.0}
    many, d4 = results.get("many-policies"), results.get("depth-4")
    if many and d4 and many.rate > 0 and d4.rate > 0:
        summary["many_policies_vs_depth4"] = round(many.rate / d4.rate, 3)
    return summary


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def table(results: list[Result]) -> str:
    head = f"{'scenario':<16} {'decisions/s':>12} {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9}" \
           f" {'srv us/dec':>10}  note"
    lines = [head, "-" * len(head)]
    group = None
    for r in results:
        if r.group != group:
            if group is not None:
                lines.append("")
            group = r.group
        if r.skipped:
            lines.append(f"{r.name:<16} {'skipped':>12}  {r.skipped}")
            continue
        srv = r.extra.get("server_us_per_decision")
        srv_s = "-" if srv is None else f"{srv:.1f}"
        lines.append(f"{r.name:<16} {r.rate:>12,.0f} {_us(r.p50_us):>9} {_us(r.p99_us):>9} "
                     f"{_us(r.p999_us):>9} {srv_s:>10}  {r.note}")
    return "\n".join(lines)


def warnings_text(results: list[Result]) -> str:
    lines = [f"  {r.name}: {r.extra['not_admitted']:,} decision(s) not admitted (Redis timeouts, "
             "open circuit or denials); they are left out of decisions/s"
             for r in results if r.extra.get("not_admitted")]
    return "\n".join(["WARNING:", *lines]) if lines else ""


def goals_text(items: list[Goal]) -> str:
    lines = ["goals:"]
    for g in items:
        lines.append(f"  [{g.status:<4}] {g.name:<30} {g.detail}   ({g.target})")
    return "\n".join(lines)


def scan_text(summary: dict[str, Any]) -> str:
    if not summary.get("points"):
        return ""
    lines = ["depth scan (check script, redis-benchmark -c 50 -P 16):"]
    for p in summary["points"]:
        srv = p["server_us"]
        lines.append(f"  {p['depth']} budget(s): {p['rate']:>9,} calls/s  "
                     f"{p['us_per_call']:>6.2f} us/call wall  "
                     f"{'-' if srv is None else f'{srv:.2f}':>6} us/call in redis")
    fit = summary.get("fit")
    if fit:
        lines.append(f"  linear fit (server us): {fit['server_us_base']} + "
                     f"{fit['server_us_per_budget']} x budgets, r2={fit['r2']}")
    if "many_policies_vs_depth4" in summary:
        lines.append(f"  1,000 other orgs in the policy: {summary['many_policies_vs_depth4']:.2f}x "
                     "the depth-4 rate (flat = 1.00)")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def chart(path: Path, results: dict[str, Result]) -> Path | None:
    """Throughput vs concurrency (PNG) when matplotlib is importable; None otherwise."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except Exception:
        return None
    lib = [(c, results[n].rate) for c, n in ((1, "sync"), (1, "async-1"), (64, "async-64"),
                                            (1000, "async-1000"))
           if n in results and results[n].rate > 0 and n != "sync"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if lib:
        ax.plot([c for c, _ in lib], [r for _, r in lib], marker="o", label="AsyncBudgetLimiter")
    leased = [(c, results[n].rate) for c, n in ((1, "sync-lease"), (64, "async-64-lease"))
              if n in results and results[n].rate > 0]
    if leased:
        ax.plot([c for c, _ in leased], [r for _, r in leased], marker="s", linestyle="--",
                label="with leases (check+commit)")
    for name, label in (("sync", "BudgetLimiter (sync)"), ("raw-sync", "raw redis-py sync"),
                        ("raw-async-64", "raw redis.asyncio"), ("rb-check-c50",
                                                                "redis-benchmark check -c 50")):
        r = results.get(name)
        if r is not None and r.rate > 0:
            conc = 64 if "64" in name else (50 if "c50" in name else 1)
            ax.scatter([conc], [r.rate], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("decisions/s")
    ax.set_title("budgetlimiter throughput vs concurrency")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
