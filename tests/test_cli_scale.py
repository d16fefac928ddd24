"""`cluster tasks` paged and filtered, `cluster kill` by state and name, the master's
`--max-completed-tasks` and `--task-retention`: through the real command against a real
master (its own OS process, no slave, so submitted tasks stay PENDING)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    db = tmp_path_factory.mktemp("scale") / "c.db"
    running = spawn([*CLUSTER, "master", "--port", str(port), "--db", str(db),
                     "--max-completed-tasks", "5", "--task-retention", "7d"], clean_env())
    try:
        wait_until(lambda: "listening" in running.stdout_text(), 30, "the master to listen")
        address = f"127.0.0.1:{port}"
        for name in ("a", "b"):
            ids = run_json("submit", "--count", "30", "--name", name, "true", master=address)
            assert len(ids["ids"]) == 30
        yield address
    finally:
        assert stop(running) == 0
    assert "Traceback" not in running.stderr_text()


def test_tasks_shows_the_newest_50_and_how_many_more(master: str) -> None:
    result = run_cli("tasks", master=master)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split()[0] for line in lines[1:-1]]
    assert rows == [str(i) for i in range(11, 61)]  # oldest first, the newest 50
    assert lines[-1].startswith("... 10 more (older)")


def test_tasks_limit_all_state_and_name(master: str) -> None:
    page = run_json("tasks", "--limit", "5", master=master)
    assert [t["id"] for t in page["tasks"]] == ["56", "57", "58", "59", "60"]
    assert page["total"] == 60
    every = run_json("tasks", "--all", master=master)
    assert [t["id"] for t in every["tasks"]] == [str(i) for i in range(1, 61)]
    named = run_json("tasks", "--name", "b-1", "--all", master=master)
    assert {t["name"] for t in named["tasks"]} == {"b-1", *(f"b-1{i}" for i in range(10))}
    assert run_json("tasks", "--state", "running", master=master) == {"tasks": [], "total": 0}
    result = run_cli("tasks", "--state", "running", "--name", "a", master=master)
    assert result.returncode == 0 and "no tasks in state RUNNING and named a*" in result.stdout


def test_kill_by_name_then_by_state(master: str) -> None:
    result = run_cli("kill", "--name", "a-", master=master)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("killed 30 task(s) named a-*")
    killed = run_json("tasks", "--state", "KILLED", "--all", master=master)
    assert killed["total"] == 30 and {t["name"][:2] for t in killed["tasks"]} == {"a-"}
    old = run_json("task", "1", master=master)  # ended and past the cap: from the database
    assert old["state"] == "KILLED"
    result = run_cli("kill", "1", master=master)
    assert_one_error_line(result, "already KILLED")
    result = run_cli("kill", "--state", "pending", master=master)
    assert result.returncode == 0 and result.stdout.startswith("killed 30 task(s)")
    assert run_json("tasks", "--state", "PENDING", master=master)["total"] == 0


@pytest.mark.parametrize(("args", "fragment"), [
    (["kill"], "name the tasks to kill"),
    (["kill", "1", "--state", "PENDING"], "not both"),
    (["tasks", "--limit", "0"], "--limit"),
    (["tasks", "--limit", "10001"], "--limit"),
    (["tasks", "--state", "bogus"], "unknown state"),
])
def test_bad_listing_and_kill_arguments_are_one_clear_error(
        master: str, args: list[str], fragment: str) -> None:
    result = run_cli(*args, master=master)
    assert_one_error_line(result, fragment)


def test_a_bad_retention_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("master", "--port", "0", "--db", str(tmp_path / "x.db"),
                     "--task-retention", "soon")
    assert result.returncode == 2
    assert_one_error_line(result, "--task-retention", "not a duration")
