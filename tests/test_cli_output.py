"""What the real console script (a subprocess) prints against a real redis-server: warnings for
orgs and teams the policy does not declare (errors with --strict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .cli_proc import ALICE, Cli, one_error_line

pytestmark = pytest.mark.redis


@pytest.fixture
def cli(fresh_redis, tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, redis=fresh_redis.url, db=f"sqlite:///{tmp_path}/bl.db")


# -- a typo in an org is not silent -------------------------------------------------------
UNDECLARED = [
    (("check", "--org", "acem", "--agent", "gpt-4o"), "org 'acem' is not declared"),
    (("record", "--org", "acem", "--agent", "gpt-4o", "--request-id", "t1"),
     "org 'acem' is not declared"),
    (("check", "--org", "acme", "--team", "engg", "--agent", "gpt-4o"),
     "team 'engg' is not declared under org 'acme'"),
    (("status", "org:nosuch"), "org 'nosuch' is not declared"),
    (("adjust", "org:nosuch", "--metric", "cost", "--amount", "1", "--why", "x"),
     "org 'nosuch' is not declared"),
    (("release", "r1", "--org", "acem"), "org 'acem' is not declared"),
]


@pytest.mark.parametrize("args,warning", UNDECLARED, ids=lambda a: "-".join(a[:2])
                         if isinstance(a, tuple) else "")
def test_undeclared_org_or_team_warns_and_strict_refuses(cli: Cli, fresh_redis, args,
                                                         warning: str) -> None:
    strict = cli("--strict", *args)
    assert strict.code == 2
    assert warning in one_error_line(strict) and strict.err.endswith("(--strict)\n")
    assert strict.out == ""
    assert fresh_redis.client().keys("*") == []  # refused before anything was written
    done = cli(*args)
    assert f"warning: {warning}" in done.err and "only" in done.err
    assert "warning" not in done.out


def test_declared_scopes_and_undeclared_users_need_no_warning(cli: Cli) -> None:
    for args in (("check", *ALICE), ("check", "--org", "acme", "--team", "eng", "--user",
                                     "someone-new", "--agent", "gpt-4o"),
                 ("--strict", "status", "org:acme/team:research/user:nobody-listed")):
        done = cli(*args)
        assert done.code == 0 and done.err == "", (args, done.err)
