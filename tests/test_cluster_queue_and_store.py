"""Integration: tasks queue for resources, and the master's SQLite file keeps every task."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from cluster_harness import TERMINAL, Cluster, cluster, free_port, wait_for  # noqa: F401 - cluster is a fixture

pytestmark = pytest.mark.timeout(60)


def test_second_task_stays_pending_until_the_first_frees_the_cpu(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=1, mem=1024)
    api = cluster.api
    first, second = api.submit([{"command": "sleep 1.5", "cpus": 1, "name": "first"},
                                {"command": "echo second", "cpus": 1, "name": "second"}])
    api.wait_state(first, "RUNNING", timeout=5)
    # While the first holds the only cpu, the second must stay PENDING.
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        states = {t["id"]: t["state"] for t in api.tasks()}
        if states[first] != "RUNNING":
            break
        assert states[second] == "PENDING", states
        time.sleep(0.05)
    vars_ = api.vars()
    assert vars_["tasks_pending"] == "1" and vars_["cpus_used"] == "1", vars_
    tasks = api.wait_terminal([first, second], timeout=10)
    a, b = tasks[first], tasks[second]
    assert (a["state"], b["state"]) == ("FINISHED", "FINISHED")
    assert b["started_at"] >= a["finished_at"], (a, b)
    assert api.logs(second) == b"second\n"


def test_queue_drains_in_submission_order_on_a_one_cpu_slave(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=1, mem=1024)
    api = cluster.api
    ids = api.submit([{"command": f"sleep 0.2; exit {i}", "cpus": 1} for i in range(4)])
    tasks = api.wait_terminal(ids, timeout=15)
    assert [tasks[i]["exit_code"] for i in ids] == [0, 1, 2, 3]
    starts = [tasks[i]["started_at"] for i in ids]
    assert starts == sorted(starts)
    for earlier, later in zip(ids, ids[1:]):
        assert tasks[later]["started_at"] >= tasks[earlier]["finished_at"]


def _rows(db: Path) -> dict[str, tuple[str, int | None, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0]: (row[1], row[2], row[3]) for row in con.execute(
            "SELECT id, state, exit_code, command FROM tasks")}
    finally:
        con.close()


def test_database_holds_every_task_after_the_master_stops_and_a_new_master_shows_them(
        cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=4, mem=1024)
    api = cluster.api
    ids = api.submit([{"command": f"exit {i % 3}", "name": f"t{i}"} for i in range(20)])
    tasks = api.wait_terminal(ids, timeout=15)
    expected = {i: (t["state"], t["exit_code"]) for i, t in tasks.items()}
    assert sorted(expected.values()).count(("FINISHED", 0)) == 7
    # No slave left: new tasks queue (they are not rejected) and must be stored as PENDING.
    slave.stop()
    wait_for(lambda: api.vars()["slaves_active"] == "0", 10, what="no active slave")
    pending = api.submit([{"command": "true", "name": f"p{i}"} for i in range(3)])
    assert all(api.task(p)["state"] == "PENDING" for p in pending)
    assert cluster.master is not None
    assert cluster.master.stop() == 0

    rows = _rows(cluster.db)
    assert len(rows) == 23
    assert {i: rows[i][:2] for i in ids} == expected
    assert all(rows[p][0] == "PENDING" for p in pending)

    # A new master (another port) on the same file shows them all, unchanged.
    old_port = cluster.master_port
    cluster.start_master(port=free_port())
    assert cluster.master_port != old_port
    api = cluster.api
    recovered = {t["id"]: t for t in api.tasks()}
    assert set(recovered) == set(ids) | set(pending)
    assert {i: (recovered[i]["state"], recovered[i]["exit_code"]) for i in ids} == expected
    assert all(recovered[p]["state"] == "PENDING" for p in pending)
    v = api.vars()
    assert v["tasks_total"] == "23" and v["tasks_pending"] == "3"
    # Ids keep counting after a restart: never reused.
    new = api.submit_one("true")
    assert int(new) > max(int(i) for i in rows)


def test_restarted_master_runs_the_tasks_left_pending(cluster: Cluster) -> None:
    cluster.start_master()
    api = cluster.api
    # No slave yet: the tasks wait in the queue, and in the database.
    ids = api.submit([{"command": f"exit {i}", "cpus": 0.5} for i in range(3)])
    assert cluster.master is not None and cluster.master.stop() == 0
    cluster.start_master()  # same port, same file
    cluster.start_slave(cpus=2)
    tasks = api.wait_terminal(ids, timeout=15)
    assert [(tasks[i]["state"], tasks[i]["exit_code"]) for i in ids] == [
        ("FINISHED", 0), ("FAILED", 1), ("FAILED", 2)]
    # The API shows an end as soon as the master knows it; the store's writer commits it a
    # moment later (the slave is acknowledged only then): wait for the rows.
    wait_for(lambda: {r[0] for r in _rows(cluster.db).values()} <= TERMINAL, 15,
             what="every row terminal", show=lambda: _rows(cluster.db))
