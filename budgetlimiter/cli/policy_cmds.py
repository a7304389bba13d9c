"""``budgetlimiter policy validate|show``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import PolicyError
from ..subject import Subject
from .context import EXIT_INPUT, Context
from .limits_cmds import current_policy
from .output import render


def subject_options(fn: Any) -> Any:
    """--org/--team/--user/--agent."""
    for opt in reversed([
        click.option("--org", required=True, help="Organisation id."),
        click.option("--team", default=None, help="Team id."),
        click.option("--user", default=None, help="User id."),
        click.option("--agent", required=True, help="Agent / model id."),
    ]):
        fn = opt(fn)
    return fn


@click.group()
def policy() -> None:
    """Validate policy files and show effective limits."""


@policy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_obj
def validate(obj: Context, file: str) -> None:
    """Check a policy file; errors name file, line, path and field (exit code 2).

    With --format json|csv the verdict is also data on stdout (valid, error, line, path,
    field), and the error line still goes to stderr."""
    from ..policy import load_policy

    row: dict[str, Any] = {"file": file, "valid": True, "orgs": None, "priced_agents": None,
                           "error": None, "line": None, "path": None, "field": None}
    try:
        pol = load_policy(Path(file))
    except PolicyError as exc:
        row.update(valid=False, error=str(exc), line=exc.line, path=exc.path, field=exc.field)
    except OSError as exc:
        row.update(valid=False, error=f"{file}: {exc.strerror or exc}")
    else:
        row.update(orgs=len(pol.orgs), priced_agents=len(pol.pricing))
    if obj.fmt != "table":
        click.echo(render([row], obj.fmt))
    if not row["valid"]:
        click.echo(row["error"], err=True)
        sys.exit(EXIT_INPUT)
    if obj.fmt == "table":
        click.echo(f"{file}: valid ({row['orgs']} orgs, {row['priced_agents']} priced agents)")


@policy.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@subject_options
@click.pass_obj
def show(obj: Context, file: str | None, org: str, team: str | None, user: str | None,
         agent: str) -> None:
    """The effective (inherited) limits of one subject, and where each was declared."""
    if file:
        obj.policy_path = file
    subject = Subject(org, agent, team=team, user=user)
    obj.declared(org, team)
    policy = current_policy(obj)  # with the runtime overrides in force
    eff = policy.resolve(subject)
    data = eff.to_dict()
    data["overrides_version"] = policy.overrides.version if policy.overrides else 0
    if obj.fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows: list[dict[str, Any]] = []
    for sc in data["scopes"]:
        for lim in sc.get("limits", []):
            rows.append({"scope": sc["scope"], "kind": "budget", "metric": lim["metric"],
                         "amount": lim["amount"], "burst": "", "period": lim["period"],
                         "mode": lim["mode"], "rollover": lim["rollover"],
                         "from": lim.get("origin", "")})
        for rate in sc.get("rates", []):
            rows.append({"scope": sc["scope"], "kind": "rate", "metric": rate["metric"],
                         "amount": rate["limit"], "burst": rate.get("burst", ""),
                         "period": f"per {rate['per']}",
                         "mode": "hard", "rollover": "", "from": rate.get("origin", "")})
    click.echo(render(rows, obj.fmt))
