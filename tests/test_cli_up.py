"""`cluster up` manages its children: SIGTERM stops everything cleanly; a dead master stops
the rest; the database and slave sandboxes live in the work directory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from test_cli_support import alive, children_of, cluster_up, run_cli, run_json, wait_until


def test_sigterm_stops_up_and_all_its_children(tmp_path: Path) -> None:
    with cluster_up(tmp_path, 1) as (address, running, children):
        [tid] = run_json("submit", "sleep 30", master=address)["ids"]
        wait_until(
            lambda: run_json("task", tid, master=address)["state"] == "RUNNING",
            15,
            "the task to run",
        )
        tasks = [c for pid in children for c in children_of(pid)]  # the task's shell
        assert tasks
        started = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=25) == 0
        assert time.monotonic() - started < 20
        wait_until(
            lambda: not any(alive(p) for p in children + tasks), 5, "children and tasks to be gone"
        )
        assert "cluster stopped" in running.stderr_text()
    assert (tmp_path / "cluster.db").is_file()
    assert (tmp_path / "slave-1").is_dir()
    assert (tmp_path / "logs" / "master.log").is_file()


def test_a_dead_master_stops_up_with_an_error(tmp_path: Path) -> None:
    with cluster_up(tmp_path, 1) as (_, running, children):
        [master] = [
            pid
            for pid in children
            if b"master" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ]
        os.kill(master, signal.SIGKILL)
        assert running.proc.wait(timeout=25) == 1
        assert "the master exited" in running.stderr_text()
        assert "Traceback" not in running.stderr_text()
        wait_until(lambda: not any(alive(p) for p in children), 5, "the slave to be gone")


def test_up_restart_keeps_tasks_in_the_work_directory(tmp_path: Path) -> None:
    with cluster_up(tmp_path, 1) as (address, _, _):
        result = run_cli("submit", "--wait", "--name", "before", "echo persisted", master=address)
        assert result.returncode == 0, result.stderr
    with cluster_up(tmp_path, 1) as (address, _, _):
        tasks = run_json("tasks", master=address)["tasks"]
        assert [(t["name"], t["state"]) for t in tasks] == [("before", "FINISHED")]
