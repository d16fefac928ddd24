"""Isolation in a real cluster (master and slaves as OS processes): a slave killed with -9
and restarted on its work dir cleans up its predecessor's cgroups and processes; without
cgroups `auto` says so once and `cgroups` refuses to start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_harness import REPO, Cluster, cluster, wait_for  # noqa: F401 - the fixture
from procs import alive
from slave.isolation import cgroupfs as fs
from test_isolation_kernel import make_isolator


def task_cgroups(work_dir: Path) -> set[str]:
    """The task cgroups under the slave cgroups that `work_dir`'s state file names."""
    state = json.loads((work_dir / fs.STATE_FILE).read_text())
    return fs.task_children(state["dirs"].values())


def test_a_restarted_slave_cleans_up_its_killed_predecessors_cgroups_and_processes(
    cluster: Cluster, tmp_path: Path
) -> None:
    make_isolator(tmp_path / "probe").close()  # NOT RUN / FAIL here when there are no cgroups
    cluster.start_master()
    first = cluster.start_slave(cpus=2, mem=1024)
    assert first.work_dir is not None
    tid = cluster.api.submit_one(
        "setsid sh -c 'echo $$ > escaped; exec sleep 300' & echo PROGRESS 10; sleep 300",
        cpus=0.5, mem=64)
    cluster.api.wait_state(tid, "RUNNING")
    escaped_file = wait_for(lambda: next(iter(first.work_dir.glob("sandboxes/*/escaped")), None)
                            if first.work_dir else None, 15, what="the escaped child's pid")
    escaped = wait_for(lambda: int(escaped_file.read_text() or 0), 5, what="its pid")
    journal = [json.loads(line) for line in (first.work_dir / "tasks.journal").read_text()
               .splitlines()]
    leader = journal[-1]["pgid"]
    assert alive(escaped) and alive(leader) and os.getpgid(escaped) != leader
    assert task_cgroups(first.work_dir) == {f"task-{tid}@1"}
    first.kill()  # kill -9: the slave dies, its task and the escaped child do not
    time.sleep(0.3)
    assert alive(escaped) and alive(leader)

    second = cluster.start_slave(cpus=2, mem=1024, work_dir=first.work_dir)
    wait_for(lambda: not alive(escaped) and not alive(leader), 15,
             what="the predecessor's processes to be killed", show=second.output)
    wait_for(lambda: task_cgroups(first.work_dir) == set(), 10,  # type: ignore[arg-type]
             what="the predecessor's task cgroup to be removed")
    wait_for(lambda: "left running by an earlier slave" in second.output(), 10,
             what="the clean-up to be logged")
    assert f"task-{tid}@1" in second.output()


def run_slave_cli(tmp_path: Path, isolation: str, port: int) -> subprocess.Popen[str]:
    """`cluster slave` in a mount namespace of its own where the cgroup hierarchies are
    read-only (as in a container without cgroup access): cgroups cannot be created."""
    script = ("set -e; for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified; do "
              "mount -o remount,bind,ro \"$d\" 2>/dev/null || true; done; "
              f"exec {sys.executable} -m cli.main slave --master 127.0.0.1:{port} "
              f"--port 0 --work-dir {tmp_path / 'work'} --isolation {isolation} -v")
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def no_cgroups_possible() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        message = "NOT RUN: needs root and unshare(1) to hide the cgroups from a slave"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_without_cgroups_auto_warns_once_and_cgroups_refuses_to_start(
    cluster: Cluster, tmp_path: Path, no_cgroups_possible: None
) -> None:
    cluster.start_master()
    refused = run_slave_cli(tmp_path / "a", "cgroups", cluster.master_port)
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 2, out
    assert "error: cannot isolate tasks with cgroups here" in out and "read-only" in out
    assert "Traceback" not in out

    auto = run_slave_cli(tmp_path / "b", "auto", cluster.master_port)
    try:
        slaves = cluster.api.wait_slaves(1, timeout=20)
        assert len(slaves) == 1
    finally:
        auto.terminate()
        out, _ = auto.communicate(timeout=30)
    warnings = [line for line in out.splitlines() if "WARN" in line.upper()
                and "isolation" in line]
    assert len(warnings) == 1, out
    assert "cgroups cannot be used here" in warnings[0] and "read-only" in warnings[0]
    assert "isolation=none" in out
