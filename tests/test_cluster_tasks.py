"""Integration: one real master and two real slaves (separate OS processes) run tasks.

The cluster is shared by the tests of this module (starting it costs ~1.5 s); each test
waits for its own tasks to end, so the slaves are idle again when the next one starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_harness import Cluster, HttpError, wait_for

SLAVE_CPUS = 4.0
SLAVE_MEM = 2048.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        c.start_master()
        c.start_slave(cpus=SLAVE_CPUS, mem=SLAVE_MEM)
        c.start_slave(cpus=SLAVE_CPUS, mem=SLAVE_MEM)
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(shared: Cluster) -> Iterator[Cluster]:
    """The shared cluster; on failure its logs since the test began show in the report."""
    shared.mark()
    yield shared
    for child in shared.slaves + [shared.master]:
        assert child is not None and child.alive(), f"{child and child.name} died:\n" \
            f"{shared.logs(since_mark=True)}"
    print(shared.logs(since_mark=True))


def test_tasks_end_finished_or_failed_with_their_exit_codes(cluster: Cluster) -> None:
    api = cluster.api
    ids = api.submit([
        {"command": "exit 0", "name": "ok"},
        {"command": "echo working; exit 3", "name": "three"},
        {"command": "exit 255", "name": "max"},
        {"command": "kill -KILL $$", "name": "signalled"},
        {"command": "no-such-command-xyz", "name": "missing"},
    ])
    assert len(ids) == 5 and len(set(ids)) == 5
    tasks = api.wait_terminal(ids, timeout=15)
    got = {tasks[i]["name"]: (tasks[i]["state"], tasks[i]["exit_code"]) for i in ids}
    assert got == {
        "ok": ("FINISHED", 0),
        "three": ("FAILED", 3),
        "max": ("FAILED", 255),
        "signalled": ("FAILED", -9),  # the shell itself died of SIGKILL
        "missing": ("FAILED", 127),
    }
    ok = tasks[ids[0]]
    assert ok["progress"] == 1.0 and ok["attempts"] == 1 and ok["slave_id"]
    assert ok["submitted_at"] <= ok["started_at"] <= ok["finished_at"]
    assert "code 3" in tasks[ids[1]]["message"]
    assert "signal 9" in tasks[ids[3]]["message"]


def test_task_object_has_every_documented_key(cluster: Cluster) -> None:
    tid = cluster.api.submit_one("true", name="keys", cpus=0.5, mem=64, timeout=30, retries=2)
    task = cluster.api.wait_state(tid, "FINISHED")
    assert set(task) == {"id", "name", "command", "cpus", "mem", "timeout", "retries", "state",
                         "progress", "exit_code", "message", "slave_id", "attempts",
                         "submitted_at", "started_at", "finished_at", "updated_at",
                         "retry_delay", "attempt", "usage", "retry_at", "pending_reason"}
    listed = {t["id"]: t for t in cluster.api.tasks()}[tid]  # the list: the record only
    assert set(listed) == set(task) - {"usage", "attempt", "retry_at", "pending_reason"}
    assert listed["attempts"] == task["attempt"] == len(task["attempts"]) == 1
    assert (task["id"], task["name"], task["command"]) == (tid, "keys", "true")
    assert (task["cpus"], task["mem"], task["timeout"], task["retries"]) == (0.5, 64, 30, 2)


def test_progress_reported_mid_run_reaches_the_master(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("echo PROGRESS 50; sleep 2.5", name="half")
    # The slave tails stdout every 0.2 s and batches; the master must show 0.5 while RUNNING.
    task = api.wait_task(tid, lambda t: t["progress"] == 0.5, timeout=5,
                         what="progress 0.5 on the master")
    assert task["state"] == "RUNNING"
    listed = {t["id"]: t for t in api.tasks()}[tid]
    assert listed["progress"] == 0.5 and listed["state"] == "RUNNING"
    running = {t["id"] for t in api.tasks(state="RUNNING")}
    assert tid in running
    done = api.wait_state(tid, {"FINISHED", "FAILED"}, timeout=10)
    assert (done["state"], done["progress"], done["exit_code"]) == ("FINISHED", 1.0, 0)


def test_progress_steps_are_seen_in_order(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("for p in 10 40 70; do echo PROGRESS $p%; sleep 0.8; done; exit 4")
    seen: list[float] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        task = api.task(tid)
        if task["state"] == "RUNNING" and (not seen or seen[-1] != task["progress"]):
            seen.append(task["progress"])
        if task["state"] in ("FINISHED", "FAILED"):
            break
        time.sleep(0.05)
    assert [p for p in seen if p > 0] == pytest.approx([0.1, 0.4, 0.7], abs=1e-6)
    final = api.task(tid)
    # A failed task keeps the last progress it reported.
    assert (final["state"], final["exit_code"]) == ("FAILED", 4)
    assert final["progress"] == pytest.approx(0.7, abs=1e-6)


def test_progress_is_reported_as_the_task_printed_it(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("echo PROGRESS 10; sleep 1.5")
    task = api.wait_task(tid, lambda t: t["progress"] > 0, timeout=5, what="some progress")
    api.wait_state(tid, "FINISHED", timeout=10)
    assert task["progress"] == 0.1


def test_kill_ends_a_running_task_killed(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("sleep 30", name="sleeper")
    api.wait_state(tid, "RUNNING", timeout=5)
    answer = api.kill(tid)
    assert answer["id"] == tid
    start = time.monotonic()
    task = api.wait_state(tid, {"KILLED", "FAILED", "FINISHED", "LOST"}, timeout=10)
    assert task["state"] == "KILLED", task
    assert time.monotonic() - start < 5  # sleep dies of SIGTERM: no need for the grace
    with pytest.raises(HttpError) as err:
        api.kill(tid)
    assert err.value.status == 409 and "KILLED" in err.value.body["error"]


def test_kill_of_unknown_task_is_404(cluster: Cluster) -> None:
    with pytest.raises(HttpError) as err:
        cluster.api.kill("999999")
    assert err.value.status == 404 and "999999" in err.value.body["error"]
    with pytest.raises(HttpError) as err:
        cluster.api.task("999999")
    assert err.value.status == 404


def test_task_stdout_and_stderr_through_the_master_logs_endpoint(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("echo hello-stdout; echo line2; echo oops >&2")
    api.wait_state(tid, "FINISHED", timeout=10)
    assert api.logs(tid) == b"hello-stdout\nline2\n"
    assert api.logs(tid, stream="stderr") == b"oops\n"
    assert api.logs(tid, offset=6) == b"stdout\nline2\n"
    assert api.logs(tid, offset=1000) == b""


def test_logs_of_a_running_task_grow(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("echo first; sleep 1.5; echo second")
    api.wait_state(tid, "RUNNING", timeout=5)
    early = wait_for(lambda: api.logs(tid) == b"first\n", 5, what="the first line of stdout")
    assert early is True
    api.wait_state(tid, "FINISHED", timeout=10)
    assert api.logs(tid, offset=len(b"first\n")) == b"second\n"


def test_task_with_a_timeout_ends_failed_saying_so(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("sleep 30", timeout=1)
    start = time.monotonic()
    task = api.wait_state(tid, {"FINISHED", "FAILED", "KILLED", "LOST"}, timeout=10)
    assert task["state"] == "FAILED", task
    assert "timed out" in task["message"] and "1" in task["message"], task["message"]
    assert time.monotonic() - start < 6
    assert task["finished_at"] - task["started_at"] >= 0.9


def test_task_too_big_for_every_slave_is_rejected_at_submit(cluster: Cluster) -> None:
    api = cluster.api
    before = len(api.tasks())
    with pytest.raises(HttpError) as err:
        api.submit({"command": "true", "cpus": 64})
    assert err.value.status == 422
    message = err.value.body["error"]
    assert "64 cpus" in message and f"{SLAVE_CPUS:g} cpus" in message, message
    with pytest.raises(HttpError) as err:
        api.submit({"command": "true", "mem": SLAVE_MEM * 10})
    assert err.value.status == 422 and "MiB" in err.value.body["error"]
    # In a list, the whole request is refused and the offending item is named.
    with pytest.raises(HttpError) as err:
        api.submit([{"command": "true"}, {"command": "true", "cpus": 64}])
    assert err.value.status == 422 and "task 1" in err.value.body["error"]
    assert len(api.tasks()) == before


@pytest.mark.parametrize("raw, needle", [
    (b"{not json", "JSON"),
    (b"", "JSON"),
    (b'{"name": "no command"}', "command"),
    (b'{"command": ""}', "command"),
    (b'{"command": "true", "cpus": -1}', "cpus"),
    (b'{"command": "true", "cpus": "two"}', "cpus"),
    (b'{"command": "true", "colour": "blue"}', "colour"),
    (b'{"command": "true", "retries": 1.5}', "retries"),
    (b"[]", "empty"),
    (b'[{"command": "true"}, 7]', "task 1"),
])
def test_malformed_submit_is_400_with_an_error(cluster: Cluster, raw: bytes,
                                              needle: str) -> None:
    before = len(cluster.api.tasks())
    status, headers, body = cluster.api.request("POST", "/master/tasks", raw=raw)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert isinstance(error, str) and needle in error, error
    assert len(cluster.api.tasks()) == before


def test_vars_are_key_value_lines_with_task_counts(cluster: Cluster) -> None:
    api = cluster.api
    before = api.vars()
    tid = api.submit_one("true")
    api.wait_state(tid, "FINISHED")
    for path in ("/master/vars", "/vars"):
        status, headers, body = api.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        lines = body.decode().splitlines()
        assert lines and all(len(line.split(" ")) == 2 for line in lines), lines
        keys = [line.split(" ")[0] for line in lines]
        assert len(keys) == len(set(keys))
    after = api.vars("/vars")
    for key in ("version", "pid", "uptime_secs", "slaves_active", "tasks_finished",
                "tasks_failed", "tasks_running", "tasks_pending", "progress_reports"):
        assert key in after, key
    assert int(after["tasks_finished"]) == int(before["tasks_finished"]) + 1
    assert int(after["tasks_finished"]) == len(api.tasks(state="FINISHED"))
    assert int(after["slaves_active"]) == 2
    assert float(after["cpus_total"]) == 2 * SLAVE_CPUS


def test_tasks_spread_over_both_slaves(cluster: Cluster) -> None:
    api = cluster.api
    # Eight 1-cpu tasks cannot all fit on one 4-cpu slave at once.
    ids = api.submit([{"command": "sleep 0.5", "cpus": 1} for _ in range(8)])
    tasks = api.wait_terminal(ids, timeout=15)
    assert all(t["state"] == "FINISHED" for t in tasks.values())
    used = {t["slave_id"] for t in tasks.values()}
    registered = {s["id"] for s in api.slaves() if s["state"] == "active"}
    assert used == registered and len(used) == 2


def test_slaves_listing_shows_resources_and_frees_them(cluster: Cluster) -> None:
    api = cluster.api
    tid = api.submit_one("sleep 30", cpus=1.5, mem=100)
    task = api.wait_state(tid, "RUNNING", timeout=5)
    slave = {s["id"]: s for s in api.slaves()}[task["slave_id"]]
    assert slave["cpus"] == SLAVE_CPUS and slave["mem"] == SLAVE_MEM
    assert slave["used_cpus"] == 1.5 and slave["used_mem"] == 100 and tid in slave["tasks"]
    api.kill(tid)
    api.wait_state(tid, "KILLED", timeout=10)
    slave = {s["id"]: s for s in api.slaves()}[task["slave_id"]]
    assert slave["used_cpus"] == 0 and tid not in slave["tasks"]
