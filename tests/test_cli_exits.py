"""The README's exit-code table, true of the real console script (a subprocess) against a real
redis-server: Redis down is 3, bad URLs are one line and 2, a port in use is 3; and `check`
holds no budget unless asked, `commit ID` / `release ID` settle from the command line (4: the
other way already, 5: unknown id), and a duplicate settle still says what it cost."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetlimiter import BudgetLimiter, load_policy
from budgetlimiter.durable.store.sql import Store

from .cli_proc import ALICE, DAN, POLICY, ROOT, Cli, child_env, one_error_line
from .servers import dead_port

pytestmark = pytest.mark.redis
ALICE_SCOPE = "org:acme/team:eng/user:alice"


@pytest.fixture
def cli(fresh_redis, tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, redis=fresh_redis.url, db=f"sqlite:///{tmp_path}/bl.db")


@pytest.fixture
def down(tmp_path: Path) -> Iterator[Cli]:
    """Settings naming a Redis that is not there (a port held, never listening, for the
    test: no other process's server can appear on it)."""
    with dead_port() as port:
        yield Cli(cwd=tmp_path, redis=f"redis://127.0.0.1:{port}/0",
                  db=f"sqlite:///{tmp_path}/bl.db")


@pytest.fixture
def limiter(fresh_redis):
    bl = BudgetLimiter(load_policy(POLICY), fresh_redis.url, timeout=2)
    yield bl
    bl.close()


def cost(limiter: BudgetLimiter, scope: str = ALICE_SCOPE) -> tuple[int, int]:
    """(used, reserved) of the scope's daily cost budget, in micro-USD."""
    s = next(s for s in limiter.scope_status(scope) if s.metric.value == "cost")
    assert s.used is not None and s.reserved is not None
    return s.used, s.reserved


def test_the_child_imports_this_checkout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c",
                           "import budgetlimiter.cli; print(budgetlimiter.cli.__file__)"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert done.stdout.strip().startswith(str(ROOT / "budgetlimiter"))


def test_readme_exit_code_table_lists_every_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| exit code | meaning |"):]
    codes = re.findall(r"^\| (\d) \|", table[:2000], flags=re.M)
    assert codes == ["0", "1", "2", "3", "4", "5"]


# -- Redis or the database unreachable: 3, one line -----------------------------------------
@pytest.mark.parametrize("reserve", [False, True], ids=["check", "check-reserve"])
def test_check_with_redis_down_exits_3_not_denied(down: Cli, reserve: bool) -> None:
    done = down("check", *ALICE, *(["--reserve"] if reserve else []))
    assert done.code == 3
    assert done.out == ""  # no "denied", no reservation id
    assert one_error_line(done).startswith(
        "error: Redis unreachable: nothing was checked or reserved")


def test_record_with_redis_down_exits_3_and_says_nothing_was_recorded(down: Cli) -> None:
    done = down("record", *ALICE, "--input-tokens", "10", "--request-id", "r-down")
    assert done.code == 3 and done.out == ""
    assert one_error_line(done) == ("error: Redis unreachable: this record was not stored "
                                    "and nothing was counted\n")


def test_commit_and_release_with_redis_down_exit_3(down: Cli) -> None:
    commit = down("commit", "r1", "--org", "acme", "--cost", "0.5")
    assert commit.code == 3 and "nothing was committed" in one_error_line(commit)
    release = down("release", "r1", "--org", "acme")
    assert release.code == 3 and "was not stored" in one_error_line(release)


def test_adjust_with_redis_down_writes_nothing_and_exits_3(down: Cli, tmp_path: Path) -> None:
    done = down("adjust", "org:acme", "--metric", "cost", "--amount", "-1", "--why", "refund",
                "--id", "adj-down")
    assert done.code == 3
    assert one_error_line(done).startswith("error: Redis unreachable")
    # not even the database file: Redis is asked before the store is opened (and migrated)
    assert not (tmp_path / "bl.db").exists()
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


# -- check holds nothing unless asked; commit ID / release ID --------------------------------
def test_check_answers_without_reserving(cli: Cli, limiter: BudgetLimiter) -> None:
    done = cli("check", *ALICE, "--input-tokens", "100000")
    assert done.code == 0
    assert done.out.splitlines()[:2] == [
        "allowed org:acme/team:eng/user:alice/agent:gpt-4o",
        "nothing reserved (--reserve holds the estimate)"]
    assert cost(limiter) == (0, 0)
    assert cli("--format", "json", "check", *ALICE).json()["reservation_id"] is None
    assert cli("check", *ALICE, "--ttl", "5").code == 2  # a TTL of nothing


def test_check_reserve_then_commit_by_id(cli: Cli, limiter: BudgetLimiter) -> None:
    reserved = cli("check", *ALICE, "--input-tokens", "100000", "--reserve", "--ttl", "60")
    assert reserved.code == 0
    line = reserved.out.splitlines()[1]
    found = re.match(r"reservation (\w+) \(expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\)", line)
    assert found, line
    rid = found.group(1)
    assert cost(limiter) == (0, 250_000)  # 100k input tokens of gpt-4o: $0.25 held
    done = cli("commit", rid, *ALICE, "--input-tokens", "40000")
    assert (done.code, done.out) == (0, f"committed {rid} cost $0.100000\n")
    assert cost(limiter) == (100_000, 0)
    again = cli("commit", rid, *ALICE, "--input-tokens", "40000")
    assert again.code == 0
    assert again.out == (f"duplicate {rid} cost $0.100000 (already committed: nothing counted "
                         "again)\n")
    assert cost(limiter) == (100_000, 0)
    release = cli("release", rid, "--org", "acme")
    assert release.code == 4
    assert one_error_line(release) == f"error: reservation {rid!r} was committed; a release " \
        "changes nothing\n"


def test_release_by_id_then_a_commit_exits_4(cli: Cli, limiter: BudgetLimiter) -> None:
    rid = cli("--format", "json", "check", *ALICE, "--input-tokens", "100000",
              "--reserve").json()["reservation_id"]
    done = cli("release", rid, "--org", "acme")
    assert (done.code, done.out) == (0, f"released {rid}\n")
    assert cost(limiter) == (0, 0)
    assert cli("release", rid, "--org", "acme").out == f"duplicate {rid} (already released)\n"
    commit = cli("commit", rid, *ALICE, "--input-tokens", "1000")
    assert commit.code == 4
    assert "was released: its usage was not counted" in one_error_line(commit)
    assert cost(limiter) == (0, 0)


def test_unknown_reservation_exits_5_unless_the_subject_counts_it(
        cli: Cli, limiter: BudgetLimiter) -> None:
    commit = cli("commit", "lost-1", "--org", "acme", "--cost", "0.5")
    assert commit.code == 5
    assert "'lost-1' is unknown" in one_error_line(commit)
    assert "pass --agent" in commit.err
    release = cli("release", "lost-2", "--org", "acme")
    assert release.code == 5 and "'lost-2' is unknown" in one_error_line(release)
    # with the subject, a reservation Redis lost is still counted, once
    counted = cli("commit", "lost-3", *ALICE, "--input-tokens", "40000")
    assert (counted.code, counted.out) == (0, "recorded lost-3 cost $0.100000\n")
    assert cli("commit", "lost-3", *ALICE, "--input-tokens", "40000").code == 0
    assert cost(limiter) == (100_000, 0)


def test_commit_needs_a_price(cli: Cli) -> None:
    done = cli("commit", "r1", "--org", "acme", "--input-tokens", "5")
    assert done.code == 2
    assert "commit needs --agent" in one_error_line(done)


def test_duplicate_record_prints_the_cost_not_none(cli: Cli) -> None:
    args = ("record", *DAN, "--input-tokens", "90000", "--output-tokens", "2000",
            "--request-id", "req-1")
    first = cli(*args)
    assert first.code == 0
    assert first.out.splitlines()[0] == "recorded req-1 cost $0.300000"
    again = cli(*args)
    assert again.code == 0
    assert again.out == ("duplicate req-1 cost $0.300000 (already recorded: nothing counted "
                         "again)\n")
    assert "None" not in again.out
    assert cli("--format", "json", *args).json()["cost"] == "0.300000"
