"""``commit ID`` and ``release ID``: settle a reservation made by ``check --reserve`` (or by
any client) knowing only its id and org."""

from __future__ import annotations

import click

from ..engine.outage import UNAVAILABLE
from ..errors import BackendUnavailable, ReservationNotFound
from ..subject import Subject
from ..usage import micros_to_usd
from .context import Context
from .live import make_usage, settle_output, usage_options


@click.command()
@click.argument("reservation_id")
@click.option("--org", required=True, help="Organisation id of the reservation.")
@click.option("--agent", default=None,
              help="Agent id: prices the usage, and lets a reservation Redis lost or that "
              "expired still be counted, once (status recorded). Without it, --cost is "
              "needed.")
@click.option("--team", default=None, help="Team id (with --agent).")
@click.option("--user", default=None, help="User id (with --agent).")
@usage_options
@click.pass_obj
def commit(obj: Context, reservation_id: str, org: str, agent: str | None, team: str | None,
           user: str | None, input_tokens: int, output_tokens: int, invocations: int,
           cost: str | None) -> None:
    """Replace reservation RESERVATION_ID's estimate by the actual usage (idempotent: a retry
    answers duplicate). Exit 4 if it was released, 5 if Redis does not know it (pass the
    subject options to count the usage anyway)."""
    if agent is None and (team is not None or user is not None):
        raise click.UsageError("--team and --user describe the subject: pass --agent too")
    actual = make_usage(input_tokens, output_tokens, invocations, cost)
    if agent is None and actual.cost is None:
        raise click.UsageError("commit needs --agent (to price the usage with the agent's "
                               "pricing) or --cost")
    subject = Subject(org, agent, team=team, user=user) if agent is not None else None
    obj.declared(org, team)
    try:
        result = obj.limiter().commit_by_id(org, reservation_id, actual, subject=subject)
    except ReservationNotFound as exc:
        if subject is not None:
            raise
        raise ReservationNotFound(f"{exc}; pass --agent (and --team/--user) to count the "
                                  "usage anyway") from None
    except UNAVAILABLE as exc:
        raise BackendUnavailable(f"nothing was committed ({exc}); retrying is safe: a "
                                 "commit counts once") from None
    asked = (actual.cost if actual.cost is not None or subject is None
             else micros_to_usd(obj.policy().pricing_for(subject.agent).cost_micros(actual)))
    settle_output(obj, result, asked, "already committed: nothing counted again")


@click.command()
@click.argument("reservation_id")
@click.option("--org", required=True, help="Organisation id of the reservation.")
@click.pass_obj
def release(obj: Context, reservation_id: str, org: str) -> None:
    """Refund reservation RESERVATION_ID, which will not be used (idempotent). Exit 4 if it
    was committed, 5 if Redis does not know it."""
    obj.declared(org)
    result = obj.limiter().release(reservation_id, org=org)
    settle_output(obj, result, None, "already released")


__all__ = ["commit", "release"]
