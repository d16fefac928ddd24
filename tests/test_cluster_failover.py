"""Integration: slaves and the master die with SIGKILL; no task is lost or stuck.

The master runs with heartbeat_interval=0.2 s and slave_timeout=2 s (the harness default),
so a dead slave is declared lost ~2 s after its link breaks.
"""

from __future__ import annotations

import time

import pytest

from cluster_harness import TERMINAL, Cluster, ConnectionRecorder, cluster, wait_for  # noqa: F401 - cluster is a fixture

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
    assert first["attempt"] == 1
    victim = cluster.slave_on(first["slave_id"])
    victim.kill()
    task = api.wait_task(tid, lambda t: t["state"] in TERMINAL and t["attempt"] == 2,
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
    assert (task["state"], task["attempt"]) == ("LOST", 1)
    time.sleep(0.5)  # a wrong re-queue would launch it again by now
    assert api.task(tid)["state"] == "LOST" and api.task(tid)["attempt"] == 1


def test_sigkilled_master_restarted_on_the_same_db_recovers_running_tasks(
        cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=4)
    api = cluster.api
    slave_id = cluster.slave_id_of(slave)
    time.sleep(0.5)  # let the slave's first registration retry timer lapse
    # Two tasks end while the master is down (their results must wait for the new master),
    # two after the restart; one of each pair fails with a known exit code.
    ids = api.submit([
        {"command": "sleep 0.5; exit 0", "name": "during-ok"},
        {"command": "sleep 0.5; exit 5", "name": "during-fail"},
        {"command": "echo PROGRESS 30; sleep 4; exit 0", "name": "after-ok"},
        {"command": "sleep 4; exit 6", "name": "after-fail"},
    ])
    for tid in ids:
        api.wait_state(tid, "RUNNING", timeout=5)
    api.wait_task(ids[2], lambda t: t["progress"] > 0.29, timeout=5, what="progress 0.3")
    assert cluster.master is not None
    cluster.master.kill()
    cluster.start_master()  # at once, on the same port and database
    api.wait_slaves(1, timeout=15)
    assert cluster.slave_id_of(slave) == slave_id  # re-registered, not a new slave
    tasks = api.wait_terminal(ids, timeout=20)
    got = {tasks[i]["name"]: (tasks[i]["state"], tasks[i]["exit_code"]) for i in ids}
    assert got == {
        "during-ok": ("FINISHED", 0), "during-fail": ("FAILED", 5),
        "after-ok": ("FINISHED", 0), "after-fail": ("FAILED", 6),
    }, {i: tasks[i]["message"] for i in ids}
    assert all(tasks[i]["attempts"] == 1 for i in ids)  # none was re-run
    v = api.vars()
    assert (v["tasks_running"], v["tasks_staging"], v["tasks_lost"]) == ("0", "0", "0")
    assert slave.alive()


def test_master_down_for_seconds_still_recovers_the_running_task(cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=2)
    api = cluster.api
    time.sleep(0.5)  # one registration timer chain only
    tid = api.submit_one("sleep 8; exit 0", name="survivor")
    api.wait_state(tid, "RUNNING", timeout=5)
    assert cluster.master is not None
    cluster.master.kill()
    # Stand in for the master and watch the slave's re-registration attempts; restart the
    # real master just after an attempt that came >= 1.9 s after the previous one, so the
    # slave's next attempt is >= ~4 s away (backoff 0.25, 0.5, 1, 2, 4, 5, 5...).
    with ConnectionRecorder(cluster.master_port) as recorder:
        def backed_off() -> bool:
            t = recorder.times
            return len(t) >= 2 and t[-1] - t[-2] >= 1.9
        wait_for(backed_off, 10, interval=0.01, what="the slave to back off to >= 2 s",
                 show=lambda: recorder.times)
    cluster.start_master()
    task = api.wait_state(tid, TERMINAL, timeout=20)
    assert (task["state"], task["exit_code"]) == ("FINISHED", 0), task
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


def test_restarted_master_launches_queued_tasks_once_its_slaves_are_back(
        cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=1)
    api = cluster.api
    first, queued = api.submit([{"command": "sleep 0.5", "cpus": 1},
                                {"command": "true", "cpus": 1}])
    api.wait_state(first, "RUNNING", timeout=5)
    assert cluster.master is not None
    cluster.master.kill()
    cluster.start_master()
    api.wait_slaves(1, timeout=10)  # the only slave is back, and its cpu frees at once
    assert api.wait_state(first, TERMINAL, timeout=5)["state"] == "FINISHED"
    api.wait_state(queued, "FINISHED", timeout=5)
