"""The README's exit-code table, true of the real console script (a subprocess) against a real
redis-server: Redis down is 3 (and `adjust` then writes nothing), bad URLs are one line and
2, a port in use is 3."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from budgetlimiter.durable.store.sql import Store

from .cli_proc import ALICE, ROOT, Cli, child_env, one_error_line
from .servers import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def cli(fresh_redis, tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, redis=fresh_redis.url, db=f"sqlite:///{tmp_path}/bl.db")


@pytest.fixture
def down(tmp_path: Path) -> Cli:
    """Settings naming a Redis that is not there (a free port nobody listens on)."""
    return Cli(cwd=tmp_path, redis=f"redis://127.0.0.1:{free_port()}/0",
               db=f"sqlite:///{tmp_path}/bl.db")


def test_the_child_imports_this_checkout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c",
                           "import budgetlimiter.cli; print(budgetlimiter.cli.__file__)"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert done.stdout.strip().startswith(str(ROOT / "budgetlimiter"))


# -- Redis or the database unreachable: 3, one line -----------------------------------------
def test_check_with_redis_down_exits_3_not_denied(down: Cli) -> None:
    done = down("check", *ALICE)
    assert done.code == 3
    assert done.out == ""  # no "denied", no reservation id
    assert one_error_line(done).startswith(
        "error: Redis unreachable: nothing was checked or reserved")


def test_record_with_redis_down_exits_3_and_says_nothing_was_recorded(down: Cli) -> None:
    done = down("record", *ALICE, "--input-tokens", "10", "--request-id", "r-down")
    assert done.code == 3 and done.out == ""
    assert one_error_line(done) == ("error: Redis unreachable: this record was not stored "
                                    "and nothing was counted\n")


def test_adjust_with_redis_down_writes_nothing_and_exits_3(down: Cli, tmp_path: Path) -> None:
    done = down("adjust", "org:acme", "--metric", "cost", "--amount", "-1", "--why", "refund",
                "--id", "adj-down")
    assert done.code == 3
    assert one_error_line(done).startswith("error: Redis unreachable")
    store = Store(f"sqlite:///{tmp_path}/bl.db")
    store.migrate()
    try:
        assert store.adjustment("adj-down") is None
        assert store.adjustments("acme", "2000-01-01", "2999-12-31") == []
    finally:
        store.close()


def test_adjust_of_a_scope_without_a_limit_on_the_metric_exits_2(cli: Cli) -> None:
    done = cli("adjust", "org:acme/team:eng", "--metric", "input_tokens", "--amount", "5",
               "--why", "x")
    assert done.code == 2
    assert "nothing to adjust" in one_error_line(done)


# -- bad URLs: one line naming the problem, 2 --------------------------------------------
REPORT = ("report", "teams", "--org", "acme")
SERVE = ("serve", "--port", "1")  # never reached: the URL is refused first


@pytest.mark.parametrize("flag,url,expected,args", [
    ("--redis", "htp://x", "unsupported backend URL scheme 'htp'", ("check", *ALICE)),
    ("--redis", "redis://ops:s3cret@127.0.0.1:abc/0", "Port could not be cast",
     ("check", *ALICE)),
    ("--redis", "redis+sentinel:///mymaster", "needs host:port of each sentinel",
     ("status", "org:acme")),
    ("--redis", "htp://x", "unsupported backend URL scheme 'htp'", SERVE),
    ("--db", "mysql://x", "unsupported database URL", REPORT),
    ("--db", "not a url", "Could not parse", REPORT),
    ("--db", "mysql://x", "unsupported database URL", SERVE),
], ids=["scheme", "port", "sentinel", "serve", "db-scheme", "db-unparsable", "db-serve"])
def test_bad_url_is_one_line_naming_it_and_exit_2(tmp_path: Path, flag: str, url: str,
                                                 expected: str, args: tuple[str, ...]) -> None:
    cli = Cli(cwd=tmp_path)
    done = cli(flag, url, *args)
    assert done.code == 2
    line = one_error_line(done)
    assert line.startswith(f"error: bad {flag} URL ") and expected in line
    assert "s3cret" not in line  # a password never reaches the terminal


def test_report_without_db_names_the_flag_and_creates_no_file(tmp_path: Path) -> None:
    done = Cli(cwd=tmp_path)("report", "teams", "--org", "acme")
    assert done.code == 2
    assert "pass --db URL" in one_error_line(done)
    assert list(tmp_path.iterdir()) == []  # no ./budgetlimiter.db


def test_serve_on_a_port_in_use_exits_3(fresh_redis, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = Cli(cwd=tmp_path, redis=fresh_redis.url)("serve", "--port", str(port),
                                                        timeout=60)
    assert done.code == 3
    assert "address already in use" in done.err


