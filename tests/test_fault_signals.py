"""A slave stopped with SIGSTOP (socket open, process silent) and resumed with SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cluster_harness import TERMINAL, Cluster, cluster, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def _task_pid(work_dir: Path, task_id: str) -> int:
    lines = (work_dir / "tasks.journal").read_text().split("\n")[:-1]  # complete lines
    [record] = [r for r in map(json.loads, lines) if r["task_id"] == task_id
                and r["event"] == "start"]
    return int(record["pid"])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stopped_slave_is_lost_by_heartbeat_and_resumed_one_kills_the_lost_task(
    cluster: Cluster,
) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=2)
    api = cluster.api
    tid = api.submit_one("sleep 30", name="frozen")
    task = api.wait_state(tid, "RUNNING", timeout=5)
    slave_id = task["slave_id"]
    assert slave.work_dir is not None
    pid = wait_for(lambda: _task_pid(slave.work_dir, tid), 5, what="the task's pid")
    os.kill(slave.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        task = api.wait_state(tid, TERMINAL, timeout=10)
        elapsed = time.monotonic() - start
        assert task["state"] == "LOST", task
        assert 1.0 <= elapsed < 6.0, elapsed  # slave_timeout is 2 s; no socket broke
        assert {s["id"]: s["state"] for s in api.slaves()}[slave_id] == "lost"
        assert _running(pid)  # the slave is frozen, its task still runs
    finally:
        os.kill(slave.pid, signal.SIGCONT)
    # Resumed: it re-registers, and the task the master declared LOST is killed there.
    wait_for(lambda: {s["id"]: s["state"] for s in api.slaves()}.get(slave_id) == "active",
             10, what="the resumed slave to re-register")
    wait_for(lambda: not _running(pid), 10, what="the LOST task to be killed on the slave")
    time.sleep(0.5)
    assert api.task(tid)["state"] == "LOST"  # not resurrected

