"""Integration: slaves and the master die with SIGKILL; no task is lost or stuck.

The master runs with heartbeat_interval=0.2 s and slave_timeout=2 s (the harness default),
so a dead slave is declared lost ~2 s after its link breaks.
"""

from __future__ import annotations

import time

import pytest

from cluster_harness import TERMINAL, Cluster, cluster, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def test_task_of_a_sigkilled_slave_becomes_lost(cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=2)
    api = cluster.api
    tid = api.submit_one("sleep 30", name="doomed")
    task = api.wait_state(tid, "RUNNING", timeout=5)
    slave_id = task["slave_id"]
    slave.kill()
    start = time.monotonic()
    task = api.wait_state(tid, TERMINAL, timeout=10)
    elapsed = time.monotonic() - start
    assert task["state"] == "LOST", task
    assert slave_id in task["message"], task["message"]
    assert 1.0 <= elapsed < 6.0, elapsed  # slave_timeout is 2 s
    slaves = {s["id"]: s for s in api.slaves()}
    assert slaves[slave_id]["state"] == "lost"
    assert slaves[slave_id]["used_cpus"] == 0 and slaves[slave_id]["tasks"] == []
    v = api.vars()
    assert (v["tasks_lost"], v["slaves_lost"], v["tasks_running"]) == ("1", "1", "0")


def test_task_of_a_sigkilled_slave_is_retried_on_the_other_slave(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=2)
    cluster.start_slave(cpus=2)
    api = cluster.api
    tid = api.submit_one("sleep 1.5; echo done-$TASK_ATTEMPT", retries=1)
    first = api.wait_state(tid, "RUNNING", timeout=5)
    assert first["attempts"] == 1
    victim = cluster.slave_on(first["slave_id"])
    victim.kill()
    task = api.wait_task(tid, lambda t: t["state"] in TERMINAL and t["attempts"] == 2,
                         timeout=15, what="the second attempt to end")
    assert task["state"] == "FINISHED" and task["exit_code"] == 0, task
    assert task["slave_id"] != first["slave_id"]
    survivor = [s for s in cluster.slaves if s is not victim][0]
    assert task["slave_id"] == cluster.slave_id_of(survivor)
    assert api.logs(tid) == b"done-2\n"
    # Only the second attempt counts: the task did not go LOST for good.
    assert api.vars()["tasks_lost"] == "0"


def test_task_without_retries_is_not_rerun_after_its_slave_dies(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=2)
    cluster.start_slave(cpus=2)
    api = cluster.api
    tid = api.submit_one("sleep 30")
    first = api.wait_state(tid, "RUNNING", timeout=5)
    cluster.slave_on(first["slave_id"]).kill()
    task = api.wait_state(tid, TERMINAL, timeout=10)
    assert (task["state"], task["attempts"]) == ("LOST", 1)
    time.sleep(0.5)  # a wrong re-queue would launch it again by now
    assert api.task(tid)["state"] == "LOST" and api.task(tid)["attempts"] == 1


def test_sigkilled_master_restarted_on_the_same_db_recovers_running_tasks(
        cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=4)
    api = cluster.api
    slave_id = cluster.slave_id_of(slave)
    # One task ends while the master is down (its result must wait for the new master),
    # two end after the restart; one of each kind fails with a known exit code.
    ids = api.submit([
        {"command": "sleep 1; exit 0", "name": "during-ok"},
        {"command": "sleep 1; exit 5", "name": "during-fail"},
        {"command": "echo PROGRESS 30; sleep 4; exit 0", "name": "after-ok"},
        {"command": "sleep 4; exit 6", "name": "after-fail"},
    ])
    for tid in ids:
        api.wait_state(tid, "RUNNING", timeout=5)
    api.wait_task(ids[2], lambda t: t["progress"] > 0.29, timeout=5, what="progress 0.3")
    assert cluster.master is not None
    cluster.master.kill()
    time.sleep(1.5)  # the first two tasks end now, with nobody to tell
    cluster.start_master()  # same port, same database
    api.wait_slaves(1, timeout=15)
    assert cluster.slave_id_of(slave) == slave_id  # re-registered, not a new slave
    tasks = api.wait_terminal(ids, timeout=20)
    got = {tasks[i]["name"]: (tasks[i]["state"], tasks[i]["exit_code"]) for i in ids}
    assert got == {
        "during-ok": ("FINISHED", 0), "during-fail": ("FAILED", 5),
        "after-ok": ("FINISHED", 0), "after-fail": ("FAILED", 6),
    }
    assert all(tasks[i]["attempts"] == 1 for i in ids)  # none was re-run
    v = api.vars()
    assert (v["tasks_running"], v["tasks_staging"], v["tasks_lost"]) == ("0", "0", "0")
    assert slave.alive()


def test_sigkilled_master_keeps_queued_tasks_and_launches_them_after_restart(
        cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=1)
    api = cluster.api
    ids = api.submit([{"command": f"sleep 0.5; exit {i}", "cpus": 1} for i in range(3)])
    api.wait_state(ids[0], "RUNNING", timeout=5)
    assert cluster.master is not None
    cluster.master.kill()
    cluster.start_master()
    tasks = api.wait_terminal(ids, timeout=20)
    assert [(tasks[i]["state"], tasks[i]["exit_code"]) for i in ids] == [
        ("FINISHED", 0), ("FAILED", 1), ("FAILED", 2)]
    assert all(tasks[i]["attempts"] == 1 for i in ids)
