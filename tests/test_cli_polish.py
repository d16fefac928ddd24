"""The CLI as a new user tries it (issue 14's "CLI polish"): hints that reach the same master,
tables that never cut ids, an honest `--wait` board, why a task waits, exit codes, --version,
`logs --tail`, `kill` of several ids, slave directories named by slave id, `make run`
without the test tools, the compose file's restart and start order. Pure parts are tested
directly; the rest through the real `cluster` command against real masters and slaves."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cli import render
from cli.options import again, examples
from cli.watch import board, pick_rows
from cli.why import pending_reason
from test_cli_support import (
    CLUSTER,
    assert_one_error_line,
    clean_env,
    cluster_up,
    free_port,
    run_cli,
    run_json,
    spawn,
    stop,
    wait_until,
)
from test_compose_local import parse_yaml

ROOT = Path(__file__).resolve().parent.parent

# -- pure parts -------------------------------------------------------------------------------


def test_hints_repeat_master_unless_it_is_the_default() -> None:
    assert again("127.0.0.1:5050") == ""
    assert again("10.0.0.5:6000") == " --master 10.0.0.5:6000"
    assert again("http://h:1/x y") == " --master 'http://h:1/x y'"


def test_examples_are_laid_out_alike() -> None:
    text = examples(("cluster up", "one"), "cluster tasks", ("cluster wait 7 8", "two"))
    assert text.lstrip("\n").splitlines() == [
        "Examples:", "", "  cluster up        # one", "", "  cluster tasks", "",
        "  cluster wait 7 8  # two",
    ]  # fmt: skip


SLAVE = {"id": "s1", "state": "active", "cpus": 2, "mem": 1024, "used_cpus": 0, "used_mem": 0,
         "tasks": []}


@pytest.mark.parametrize("slaves,ahead,expected", [
    ([], 0, "no slave is registered with the master; start one: cluster slave --master m:1"),
    ([{**SLAVE, "state": "lost"}, {**SLAVE, "id": "s2", "state": "disconnected"}], 0,
     "no slave is active (1 disconnected, 1 lost)"),
    ([{**SLAVE, "cpus": 0.5}], 0, "no active slave offers 1 cpus and 64 MiB (the largest offer "
     "0.5 cpus, 1024 MiB)"),
    ([{**SLAVE, "used_cpus": 1.5, "tasks": ["1", "2"]}], 0,
     "waiting for 1 cpus and 64 MiB to be free: the 1 slave(s) big enough are busy with 2"),
    ([SLAVE], 3, "queued behind 3 older PENDING task(s)"),
    ([SLAVE], 0, "about to be placed on a slave"),
])  # fmt: skip
def test_pending_reason_names_what_the_task_waits_for(
    slaves: list[dict[str, Any]], ahead: int, expected: str
) -> None:
    task = {"id": "9", "state": "PENDING", "cpus": 1, "mem": 64}
    assert pending_reason(task, slaves, ahead, master="m:1").startswith(expected)


def _render(renderable: Any, width: int = 120) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


def _task(tid: int, state: str, progress: float = 0.0, started: float | None = 100.0) -> dict:
    finished = 150.0 if state in ("FINISHED", "FAILED", "KILLED", "LOST") else None
    return {"id": str(tid), "name": str(tid), "state": state, "progress": progress,
            "started_at": started, "finished_at": finished}


def test_board_shows_running_and_failed_first_and_counts_the_rest() -> None:
    ids = [str(i) for i in range(1, 501)]
    tasks = {tid: _task(int(tid), "FINISHED", 1.0) for tid in ids}
    for i in range(481, 500):
        tasks[str(i)] = _task(i, "RUNNING", 0.8)
    tasks["500"] = _task(500, "FAILED", 0.1)
    shown = pick_rows(ids, tasks, 20)
    assert shown == [str(i) for i in range(481, 500)] + ["500"]
    text = _render(board(ids, tasks, now=200.0))
    assert "+480 more" in text
    # 480 finished (1.0) + 19 running at 0.8 + 1 failed at 0.1, over 500: 99%, not 96%.
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert " 99%" in total and "481/500 ended" in total
    assert "19 running" in total and "1 failed" in total and "480 finished" in total


def test_board_total_is_honest_for_a_lost_task_and_while_tasks_run() -> None:
    lost = _render(board(["1"], {"1": _task(1, "LOST", 0.3)}, now=200.0))
    assert " 30%" in lost.splitlines()[-1] and "1/1 ended" in lost
    running = _render(board(["1", "2"], {"1": _task(1, "RUNNING", 0.8),
                                         "2": _task(2, "RUNNING", 0.8)}, now=200.0))
    assert " 80%" in running.splitlines()[-1]  # not 0%: nothing ended yet


def test_board_clock_runs_while_a_task_at_100_percent_still_runs() -> None:
    tasks = {"1": _task(1, "RUNNING", 1.0, started=100.0)}
    first = _render(board(["1"], tasks, now=110.0))
    later = _render(board(["1"], tasks, now=125.0))
    assert "10.0s" in first and "25.0s" in later


def test_board_says_why_tasks_wait() -> None:
    text = _render(board(["1"], {"1": _task(1, "PENDING", started=None)}, now=1.0,
                         reason="no slave is registered"))
    assert "waiting: no slave is registered" in text


def _table_text(table: Any, width: int, terminal: bool) -> str:
    buf = io.StringIO()
    saved = render.stdout
    render.stdout = Console(file=buf, width=width, force_terminal=terminal, color_system=None)
    try:
        render.print_table(table)
    finally:
        render.stdout = saved
    return buf.getvalue()


TASKS = [
    {"id": "1234567", "name": "broken-build-with-a-long-name", "state": "RUNNING",
     "progress": 0.5, "command": "make " + "x" * 200, "slave_id": "b2e1f3a4-S1",
     "started_at": time.time() - 5},
    {"id": "8", "name": "", "state": "FINISHED", "progress": 1.0, "command": "true",
     "exit_code": 0, "slave_id": "b2e1f3a4-S22"},
]  # fmt: skip


def test_tables_never_cut_ids_and_names_only_the_command_gives_way() -> None:
    text = _table_text(render.tasks_table(TASKS), 110, terminal=True)
    assert "1234567" in text and "broken-build-with-a-long-name" in text
    assert "b2e1f3a4-S1" in text and "b2e1f3a4-S22" in text
    assert "…" in text and "x" * 200 not in text  # the command was shortened to fit
    assert "make xxx" in text
    assert all(len(line) <= 110 for line in text.splitlines())
    assert all(line == line.rstrip() for line in text.splitlines())
    narrow = _table_text(render.tasks_table(TASKS), 40, terminal=True)
    assert "broken-build-with-a-long-name" in narrow and "b2e1f3a4-S22" in narrow


def test_piped_tables_are_whole_and_not_padded() -> None:
    text = _table_text(render.tasks_table(TASKS), 80, terminal=False)
    assert "make " + "x" * 200 in text  # nothing cut when piped, not even the command
    assert all(line == line.rstrip() for line in text.splitlines())
    header, first, second = text.splitlines()
    assert header.split()[0] == "ID" and first.split()[0] == "1234567"
    assert second.split()[-1] == "true"
    slaves = [{"id": "a-very-long-slave-id-S1", "pid": "slave(1)@10.0.0.1:5051",
               "hostname": "host-with-a-long-name.example.org", "state": "active", "cpus": 2,
               "mem": 1024, "used_cpus": 0, "used_mem": 0, "tasks": [], "last_contact": None}]
    narrow = _table_text(render.slaves_table(slaves), 40, terminal=True)
    assert "a-very-long-slave-id-S1" in narrow and "host-with-a-long-name.example.org" in narrow


# -- help, version, exit codes ----------------------------------------------------------------


COMMANDS = ["master", "slave", "up", "submit", "tasks", "task", "slaves", "kill", "logs", "wait"]


def test_help_shows_no_type_beside_flags_and_no_int_for_verbose() -> None:
    for name in COMMANDS:
        result = run_cli(name, "--help", env=clean_env(COLUMNS="120"))
        assert result.returncode == 0, result.stderr
        assert "<bool>" not in result.stdout and "<list[str]>" not in result.stdout, name
        for line in result.stdout.splitlines():
            if "--verbose" in line:
                assert "<int>" not in line, line
        assert "\n   cluster " in result.stdout, name  # examples, indented alike


def test_master_secret_help_describes_the_masters_side() -> None:
    master = run_cli("master", "--help", env=clean_env(COLUMNS="200")).stdout
    assert "Require this secret of slaves registering" in master
    assert "sent as 'Authorization: Bearer'" not in master
    slave = run_cli("slave", "--help", env=clean_env(COLUMNS="200")).stdout
    assert "sent when registering" in slave


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and re.fullmatch(r"cluster \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("args,fragment", [
    (["submit", "--cpus", "-1", "true"], "--cpus must be a number greater than 0"),
    (["submit", "--count", "0", "true"], "--count must be between 1 and 10000"),
    (["submit", "--retries", "-2", "true"], "--retries must be 0 or more"),
    (["submit", " "], "COMMAND is empty"),
    (["wait", "1", "--timeout", "0"], "--timeout must be a number greater than 0"),
    (["logs", "1", "--tail", "-3"], "--tail must be 0 or more"),
    (["submit", "--cpus", "lots", "true"], "--cpus"),
])  # fmt: skip
def test_refused_values_are_usage_errors_with_exit_code_2(args: list[str], fragment: str) -> None:
    result = run_cli(*args, master=f"127.0.0.1:{free_port()}")  # never reached
    line = assert_one_error_line(result, fragment)
    assert result.returncode == 2, (result.returncode, line)
    assert "--help" in line


# -- against a real cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("polish")
    with cluster_up(work, 2) as (address, _, _):
        yield address, work


def _submit(master: str, *args: str) -> str:
    return str(run_json("submit", *args, master=master)["ids"][0])


def test_pasted_hints_reach_the_same_master(up: tuple[str, Path]) -> None:
    master, _ = up
    submitted = run_cli("submit", "true", master=master)
    assert submitted.returncode == 0
    tid = submitted.stdout.split()[2]
    assert f"follow: cluster wait --master {master} {tid}" in submitted.stdout
    failed = run_cli("submit", "--wait", "exit 4", master=master)
    assert failed.returncode == 1
    bad = re.search(r"task (\d+) FAILED", failed.stderr)
    assert bad and f"see: cluster logs --master {master} {bad.group(1)} --stderr" in failed.stderr


def test_wait_timeout_has_its_own_exit_code_and_hint(up: tuple[str, Path]) -> None:
    master, _ = up
    tid = _submit(master, "sleep 30")
    result = run_cli("wait", tid, "--timeout", "0.5", master=master)
    assert_one_error_line(result, "timed out", f"cluster wait --master {master} {tid}")
    assert result.returncode == 124  # not 1, which means a task did not finish
    run_cli("kill", tid, master=master)


def test_logs_tail_prints_the_last_lines(up: tuple[str, Path]) -> None:
    master, _ = up
    tid = _submit(master, "for i in 1 2 3 4 5; do echo line$i; done; printf tail-no-newline")
    assert run_cli("wait", tid, "--timeout", "20", master=master).returncode == 0
    assert run_cli("logs", tid, "--tail", "2", master=master).stdout == "line5\ntail-no-newline"
    assert run_cli("logs", tid, "-n", "1", master=master).stdout == "tail-no-newline"
    assert run_cli("logs", tid, "--tail", "0", master=master).stdout == ""
    whole = run_cli("logs", tid, "--tail", "100", master=master).stdout
    assert whole == "line1\nline2\nline3\nline4\nline5\ntail-no-newline"


def test_logs_tail_then_follow(up: tuple[str, Path]) -> None:
    master, _ = up
    tid = _submit(master, "echo a; echo b; sleep 5; echo c")
    wait_until(lambda: "b" in run_cli("logs", tid, master=master).stdout, 20, "two lines")
    result = run_cli("logs", tid, "--tail", "1", "-f", master=master)
    assert result.returncode == 0 and result.stdout == "b\nc\n"


def test_kill_of_several_ids_kills_every_one_and_reports_the_unknown(up: tuple[str, Path]) -> None:
    master, _ = up
    ids = [_submit(master, "sleep 30") for _ in range(2)]
    for tid in ids:
        wait_until(lambda tid=tid: run_json("task", tid, master=master)["state"] == "RUNNING",
                   20, "running")
    result = run_cli("kill", *ids, "999999", ids[0], master=master)
    assert_one_error_line(result, "could not kill 1 of 3 task(s)", "999999")
    for tid in ids:
        assert f"task {tid}" in result.stdout
        wait_until(lambda tid=tid: run_json("task", tid, master=master)["state"] == "KILLED",
                   20, f"task {tid} KILLED")


def test_up_links_each_slave_directory_by_the_slave_id(up: tuple[str, Path]) -> None:
    master, work = up
    slaves = run_json("slaves", master=master)["slaves"]

    def linked() -> bool:
        return all((work / "slaves" / s["id"]).is_dir() for s in slaves)

    wait_until(linked, 20, "a link per slave id")
    targets = set()
    for s in slaves:
        link = work / "slaves" / s["id"]
        assert link.is_symlink()
        assert json.loads((link / "slave.json").read_text())["slave_id"] == s["id"]
        targets.add(link.resolve().name)
    assert targets == {"slave-1", "slave-2"}
    tid = _submit(master, "echo in-the-sandbox")
    assert run_cli("wait", tid, "--timeout", "20", master=master).returncode == 0
    task = run_json("task", tid, master=master)
    sandbox = work / "slaves" / task["slave_id"] / "sandboxes" / f"{tid}@{task['attempt']}"
    assert (sandbox / "stdout").read_text() == "in-the-sandbox\n"
    shown = run_cli("task", tid, master=master).stdout
    assert f"sandboxes/{tid}@{task['attempt']}" in " ".join(shown.split())


def test_piped_tasks_listing_has_no_padding_and_whole_ids(up: tuple[str, Path]) -> None:
    master, _ = up
    _submit(master, "--name", "a-name-that-is-rather-long-for-a-table", "true " + "y" * 300)
    listing = run_cli("tasks", master=master, env=clean_env(COLUMNS="60"))
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert any("a-name-that-is-rather-long-for-a-table" in line for line in lines)
    slaves = run_cli("slaves", master=master, env=clean_env(COLUMNS="40")).stdout
    for s in run_json("slaves", master=master)["slaves"]:
        assert s["id"] in slaves


@pytest.fixture
def lonely_master(tmp_path: Path) -> Iterator[str]:
    """A real master with no slave at all."""
    port = free_port()
    running = spawn([*CLUSTER, "master", "--port", str(port), "--db", str(tmp_path / "c.db")],
                    clean_env())
    try:
        wait_until(lambda: run_cli("slaves", master=f"127.0.0.1:{port}").returncode == 0
                   or running.proc.poll() is not None, 30, "the master")
        yield f"127.0.0.1:{port}"
    finally:
        stop(running)


def test_a_pending_task_says_why_it_waits(lonely_master: str) -> None:
    master = lonely_master
    tid = _submit(master, "true")
    shown = run_cli("task", tid, master=master, env=clean_env(COLUMNS="200"))
    assert shown.returncode == 0
    assert f"no slave is registered with the master; start one: cluster slave --master " \
           f"{master}" in shown.stdout
    waited = run_cli("wait", tid, "--timeout", "1.5", master=master)
    assert waited.returncode == 124
    assert "waiting: no slave is registered" in waited.stderr
    second = _submit(master, "true")
    behind = run_cli("task", second, master=master, env=clean_env(COLUMNS="200")).stdout
    assert "no slave is registered" in behind  # that comes first: no queue without a slave


# -- make run, docker compose -----------------------------------------------------------------


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    venv = tmp_path / "venv"

    def dry(target: str) -> str:
        out = subprocess.run(["make", "-n", "-B", target, f"VENV={venv}"], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    run = dry("run")
    assert "pip install --quiet -e ." in run and "[test]" not in run
    assert "cluster up" in run
    assert "pip install --quiet -e '.[test]'" in dry("test")


def test_compose_restarts_services_and_starts_slaves_after_a_healthy_master() -> None:
    services = parse_yaml((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["master"]["restart"] == "unless-stopped"
    assert services["slave"]["restart"] == "unless-stopped"
    assert services["slave"]["depends_on"] == {"master": {"condition": "service_healthy"}}
    assert "/health" in " ".join(services["master"]["healthcheck"]["test"])


def test_the_compose_healthcheck_passes_on_a_live_master_and_fails_without_one(
    lonely_master: str,
) -> None:
    services = parse_yaml((ROOT / "docker-compose.yml").read_text())["services"]
    kind, *argv = services["master"]["healthcheck"]["test"]
    assert kind == "CMD" and argv[0] == "python"
    port = lonely_master.rsplit(":", 1)[1]

    def check(at: str) -> int:
        code = [a.replace("127.0.0.1:5050", at) for a in argv[1:]]
        return subprocess.run([sys.executable, *code], capture_output=True, timeout=30,
                              env={**os.environ, "no_proxy": "*"}).returncode

    assert check(f"127.0.0.1:{port}") == 0
    assert check(f"127.0.0.1:{free_port()}") != 0



