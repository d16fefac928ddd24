"""What a user sees when things go wrong, and the help: one clear line, no traceback."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.client import ClusterError, master_base_url
from cli.servers import LogfmtFormatter
from test_cli_support import (
    CLUSTER,
    assert_one_error_line,
    clean_env,
    free_port,
    run_cli,
    run_json,
    spawn,
    stop,
    wait_until,
)

COMMANDS = ["master", "slave", "up", "submit", "tasks", "task", "slaves", "kill", "logs", "wait"]


@pytest.mark.parametrize(
    "args",
    [
        ["tasks"],
        ["tasks", "--json"],
        ["task", "1"],
        ["slaves"],
        ["submit", "echo hi"],
        ["submit", "--wait", "echo hi"],
        ["kill", "1"],
        ["logs", "-f", "1"],
        ["wait", "1"],
    ],
)
def test_unreachable_master_is_one_line_and_nonzero(args: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(*args, master=address)
    assert_one_error_line(result, f"cannot reach the master at {address}", "connection refused")
    assert result.returncode == 1


def test_master_flag_beats_environment_and_bad_address_is_reported() -> None:
    env_master = f"127.0.0.1:{free_port()}"
    flag_master = f"127.0.0.1:{free_port()}"
    result = run_cli("tasks", "--master", flag_master, master=env_master)
    assert_one_error_line(result, flag_master)
    assert_one_error_line(run_cli("tasks", "--master", "host:port"), "not HOST:PORT")


def test_help_of_every_command_has_examples_and_exits_zero() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert name in top.stdout
        result = run_cli(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Examples" in result.stdout, name
        assert f"cluster {name}" in result.stdout, name


def test_help_starts_fast_without_importing_the_servers() -> None:
    probe = (
        "import sys, cli.main; "
        "print(sorted(m for m in ('aiohttp', 'sqlalchemy', 'master', 'slave', 'libproc') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
    started = time.monotonic()
    assert run_cli("--help").returncode == 0
    assert time.monotonic() - started < 5.0


def test_usage_errors_are_one_line_with_exit_code_2() -> None:
    for args, fragment in (
        (["frobnicate"], "frobnicate"),
        (["submit"], "COMMAND"),
        (["submit", "--count", "x", "true"], "--count"),
    ):
        result = run_cli(*args)
        assert_one_error_line(result, fragment)
        assert result.returncode == 2


def test_master_with_an_unusable_database_says_why(tmp_path: Path) -> None:
    db = tmp_path / "missing-dir" / "cluster.db"
    result = run_cli("master", "--port", str(free_port()), "--db", str(db))
    assert_one_error_line(result, str(db.parent))


def test_master_and_slave_on_a_busy_port_say_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        master = run_cli("master", "--port", port, "--db", str(tmp_path / "c.db"))
        assert_one_error_line(master, f"127.0.0.1:{port}", "already in use")
        slave = run_cli(
            "slave", "--port", port, "--work-dir", str(tmp_path / "w"), "--master", "127.0.0.1:1"
        )
        assert_one_error_line(slave, f"127.0.0.1:{port}", "already in use")
        up = run_cli("up", "--port", port, "--work-dir", str(tmp_path / "up"))
        assert_one_error_line(up, port, "in use")


def test_invalid_slave_resources_are_refused_before_starting(tmp_path: Path) -> None:
    result = run_cli("slave", "--cpus", "0", "--work-dir", str(tmp_path))
    assert_one_error_line(result, "--cpus", "greater than 0")


def test_secret_is_required_for_writes_and_read_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    master = spawn(
        [*CLUSTER, "master", "--port", str(port), "--db", str(tmp_path / "c.db")],
        clean_env(CLUSTER_SECRET="s3cret"),
    )
    try:
        wait_until(
            lambda: "listening" in master.stdout_text() or master.proc.poll() is not None,
            30,
            "the master to listen",
        )
        refused = run_cli("submit", "echo hi", master=address)
        assert_one_error_line(refused, "secret")
        accepted = run_cli(
            "submit",
            "--json",
            "echo hi",
            env=clean_env(CLUSTER_MASTER=address, CLUSTER_SECRET="s3cret"),
        )
        assert accepted.returncode == 0, accepted.stderr
        assert len(run_json("tasks", master=address)["tasks"]) == 1  # reads are open
    finally:
        assert stop(master) == 0
    assert "Traceback" not in master.stderr_text()


def test_verbose_master_logs_one_logfmt_line_per_record(tmp_path: Path) -> None:
    port = free_port()
    master = spawn(
        [*CLUSTER, "master", "-v", "--port", str(port), "--db", str(tmp_path / "c.db")], clean_env()
    )
    try:
        wait_until(lambda: "level=info" in master.stderr_text(), 30, "an INFO log line")
    finally:
        stop(master)
    lines = [line for line in master.stderr_text().splitlines() if line]
    assert lines and all(line.startswith("ts=") and " level=" in line for line in lines)
    assert any("proc=master" in line and 'msg="master' in line for line in lines)


def test_quiet_by_default(tmp_path: Path) -> None:
    port = free_port()
    master = spawn(
        [*CLUSTER, "master", "--port", str(port), "--db", str(tmp_path / "c.db")], clean_env()
    )
    try:
        wait_until(lambda: "listening" in master.stdout_text(), 30, "the master to listen")
        assert run_json("tasks", master=f"127.0.0.1:{port}") == {"tasks": [], "total": 0}
    finally:
        stop(master)
    assert master.stderr_text() == ""


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:5050", "http://127.0.0.1:5050"),
        ("example.org", "http://example.org:5050"),
        ("http://10.0.0.5:6000/", "http://10.0.0.5:6000"),
        ("master@10.0.0.5:5050", "http://10.0.0.5:5050"),
        ("[::1]:5050", "http://[::1]:5050"),
    ],
)
def test_master_address_forms(given: str, url: str) -> None:
    assert master_base_url(given) == url


@pytest.mark.parametrize("given", ["", "host:port", "ftp://x:1", "h:70000", "a/b:1"])
def test_bad_master_addresses_are_refused(given: str) -> None:
    with pytest.raises(ClusterError, match="HOST:PORT"):
        master_base_url(given)


def test_logfmt_formatter_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "master", logging.ERROR, __file__, 1, 'said "%s"', ("hi",), sys.exc_info()
        )
    line = LogfmtFormatter("slave-2").format(record)
    assert "\n" not in line
    assert line.startswith("ts=") and " level=error proc=slave-2 logger=master " in line
    assert 'msg="said \\"hi\\""' in line and "exc=" in line and "ValueError" in line
