"""Integration under load: a burst of small tasks must not make a healthy slave look dead."""

from __future__ import annotations

import pytest

from cluster_harness import Cluster, cluster  # noqa: F401 - cluster is a fixture

pytestmark = pytest.mark.timeout(60)
N = 2000


def test_burst_of_2000_tiny_tasks_on_one_slave_all_finish(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=64, mem=64 * 1024)
    api = cluster.api
    # One request, so one LaunchTasksMessage carries them all to the slave.
    ids = api.submit([{"command": "true", "cpus": 0.01, "mem": 1} for _ in range(N)])
    tasks = api.wait_terminal(ids, timeout=30)
    states: dict[str, int] = {}
    for t in tasks.values():
        states[t["state"]] = states.get(t["state"], 0) + 1
    v = api.vars()
    assert (states, v["slaves_lost"]) == ({"FINISHED": N}, "0"), \
        {t["message"] for t in tasks.values() if t["state"] != "FINISHED"}
