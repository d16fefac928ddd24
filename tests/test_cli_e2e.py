"""End to end through the `cluster` command: one `cluster up` (a master and two slaves, each
its own OS process) serves the whole module; every test drives it as a user would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli_support import (
    Running,
    assert_one_error_line,
    clean_env,
    cluster_up,
    run_cli,
    run_json,
    wait_until,
)

Cluster = tuple[str, Running, list[int]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_up(tmp_path_factory.mktemp("up"), 2) as running:
        yield running


@pytest.fixture
def master(cluster: Cluster) -> str:
    return cluster[0]


def _submit(master: str, *args: str) -> list[str]:
    ids = run_json("submit", *args, master=master)["ids"]
    assert ids and all(isinstance(i, str) for i in ids)
    return list(ids)


def _state(master: str, task_id: str) -> str:
    return str(run_json("task", task_id, master=master)["state"])


def test_up_prints_master_url_vars_url_and_an_example(cluster: Cluster) -> None:
    address, running, _ = cluster
    banner = running.stdout_text()
    assert f"http://{address}/master/state" in banner
    assert f"http://{address}/vars" in banner
    assert "cluster submit" in banner


def test_up_runs_master_and_each_slave_as_its_own_process(cluster: Cluster) -> None:
    address, _, children = cluster
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children]
    roles = sorted(argv[argv.index(b"cli.main") + 1].decode() for argv in commands)
    assert roles == ["master", "slave", "slave"]
    slaves = run_json("slaves", master=address)["slaves"]
    assert [s["state"] for s in slaves] == ["active", "active"]
    assert {s["cpus"] for s in slaves} == {2.0}


def test_submit_wait_exits_zero_when_every_task_finishes(master: str) -> None:
    result = run_cli(
        "submit",
        "--count",
        "2",
        "--name",
        "ok",
        "--wait",
        "for i in 1 2 3; do echo PROGRESS $((i*33)); sleep 0.1; done",
        master=master,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("FINISHED") >= 2
    assert "ok-1" in result.stdout and "ok-2" in result.stdout


def test_submit_wait_on_a_terminal_draws_a_progress_bar_per_task(master: str) -> None:
    # FORCE_COLOR makes rich treat the captured stderr as a terminal.
    result = run_cli(
        "submit", "--count", "2", "--name", "bar", "--wait",
        "echo PROGRESS 50; sleep 1.5",
        env=clean_env(CLUSTER_MASTER=master, FORCE_COLOR="1", COLUMNS="100"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = result.stderr.rsplit("\x1b[?25h", 1)[0]  # the last frame, before the cursor returns
    assert "bar-1" in final and "bar-2" in final and "total" in final
    assert "━" in final and "100%" in final and "FINISHED" in final


def test_submit_wait_fails_and_names_the_failed_task(master: str) -> None:
    result = run_cli("submit", "--name", "doomed", "--wait", "echo oops >&2; exit 3", master=master)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [task] = run_json("tasks", "--state", "FAILED", master=master)["tasks"][-1:]
    assert task["name"] == "doomed" and task["exit_code"] == 3
    assert f"task {task['id']} (doomed) FAILED" in result.stderr
    assert "code 3" in result.stderr


def test_submit_json_then_tasks_json_lists_them(master: str) -> None:
    ids = _submit(master, "--count", "3", "true")
    listing = run_json("tasks", master=master)
    by_id = {t["id"]: t for t in listing["tasks"]}
    assert set(ids) <= set(by_id)
    for tid in ids:
        assert by_id[tid]["command"] == "true"
        assert 0.0 <= by_id[tid]["progress"] <= 1.0
    assert run_cli("wait", *ids, "--timeout", "20", master=master).returncode == 0
    finished = run_json("tasks", "--state", "finished", master=master)["tasks"]
    assert set(ids) <= {t["id"] for t in finished}
    assert {t["state"] for t in finished} == {"FINISHED"}


def test_tasks_table_and_task_details_for_people(master: str) -> None:
    [tid] = _submit(master, "--name", "shown", "echo shown")
    assert run_cli("wait", tid, "--timeout", "20", master=master).returncode == 0
    table = run_cli("tasks", master=master)
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if " shown " in f" {line} ")
    assert row.split()[0] == tid and "FINISHED" in row
    details = run_cli("task", tid, master=master)
    assert details.returncode == 0 and "FINISHED" in details.stdout
    assert "echo shown" in details.stdout


def test_logs_prints_stdout_and_stderr_of_a_task(master: str) -> None:
    [tid] = _submit(master, "echo hello-out; echo hello-err >&2")
    assert run_cli("wait", tid, "--timeout", "20", master=master).returncode == 0
    out = run_cli("logs", tid, master=master)
    assert out.returncode == 0 and out.stdout == "hello-out\n"
    err = run_cli("logs", tid, "--stderr", master=master)
    assert err.returncode == 0 and err.stdout == "hello-err\n"


def test_logs_follow_streams_until_the_task_ends(master: str) -> None:
    [tid] = _submit(master, "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo done")
    result = run_cli("logs", "-f", tid, master=master, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line1\nline2\nline3\ndone\n"
    assert _state(master, tid) == "FINISHED"


def test_kill_of_a_running_task_ends_killed(master: str) -> None:
    [tid] = _submit(master, "--name", "sleeper", "sleep 30")
    wait_until(lambda: _state(master, tid) == "RUNNING", 15, "the task to run")
    timed_out = run_cli("wait", tid, "--timeout", "0.3", master=master)
    assert_one_error_line(timed_out, "timed out", tid)
    killed = run_cli("kill", tid, master=master)
    assert killed.returncode == 0, killed.stderr
    waited = run_cli("wait", tid, "--timeout", "20", master=master)
    assert waited.returncode != 0  # KILLED is not FINISHED
    assert "KILLED" in waited.stdout + waited.stderr
    assert _state(master, tid) == "KILLED"
    again = run_cli("kill", tid, master=master)
    assert_one_error_line(again, "already KILLED")


def test_wait_exit_code_is_zero_only_if_all_finished(master: str) -> None:
    [good] = _submit(master, "true")
    [bad] = _submit(master, "--name", "bad-one", "exit 7")
    assert run_cli("wait", good, "--timeout", "20", master=master).returncode == 0
    both = run_cli("wait", good, bad, "--json", "--timeout", "20", master=master)
    assert both.returncode == 1
    states = {t["id"]: t["state"] for t in json.loads(both.stdout)["tasks"]}
    assert states == {good: "FINISHED", bad: "FAILED"}
    assert f"task {bad} (bad-one) FAILED" in both.stderr
    assert f"task {good}" not in both.stderr


def test_unknown_task_id_is_one_clear_error(master: str) -> None:
    for args in (["task", "999999"], ["logs", "999999"], ["kill", "999999"], ["wait", "999999"]):
        assert_one_error_line(run_cli(*args, master=master), "no task with id '999999'")


def test_invalid_resources_are_one_clear_error(master: str) -> None:
    assert_one_error_line(run_cli("submit", "--cpus", "-1", "true", master=master), "--cpus")
    assert_one_error_line(run_cli("submit", "--mem", "0", "true", master=master), "--mem")
    too_big = run_cli("submit", "--cpus", "64", "true", master=master)
    assert_one_error_line(too_big, "64 cpus", "largest slave has 2 cpus")
    not_a_number = run_cli("submit", "--cpus", "lots", "true", master=master)
    assert_one_error_line(not_a_number, "--cpus")
    assert not_a_number.returncode == 2  # a usage error
    bad_state = run_cli("tasks", "--state", "SLEEPING", master=master)
    assert_one_error_line(bad_state, "SLEEPING")
