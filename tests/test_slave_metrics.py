"""GET /metrics on a slave's port: its tasks, resources, status updates, isolation and GC,
beside libproc's own counters, in the Prometheus text format (parsed by prometheus_client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

import libproc
from libproc import UPID, Clock
from protos import cluster_pb2 as pb
from signed_peers import SignedMaster
from slave.process import Slave, SlaveConfig
from waiting import until

pytestmark = pytest.mark.timeout(60)


class Master(SignedMaster):
    """Acknowledges status updates only while `acking`."""

    def __init__(self) -> None:
        super().__init__()
        self.acking = True
        self.states: list[int] = []

    def on_message(self, sender: UPID, msg: Any) -> None:
        if isinstance(msg, pb.StatusUpdateMessage):
            self.states.append(msg.update.state)
            if self.acking:
                super().on_message(sender, msg)

    def launch(self, task_id: str, command: str, cpus: float = 0.5) -> None:
        self.signed(pb.LaunchTasksMessage(id=1, tasks=[pb.TaskInfo(
            name=task_id, task_id=pb.TaskID(value=task_id), command=command, attempt=1,
            resources=pb.Resources(cpus=cpus, mem=64))]))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[UPID, Master, Slave]]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0)
    master = Master()
    libproc.spawn(master)
    slave = Slave(SlaveConfig(master=master.pid, work_dir=tmp_path / "work", cpus=3,
                              mem=2048, isolation="none", update_retry=0.2,
                              master_timeout=1e9))
    libproc.spawn(slave)
    try:
        await until(lambda: slave.mode == "registered")
        yield address, master, slave
    finally:
        await libproc.stop()
        Clock.reset()


async def scrape(port: int) -> dict[str, Metric]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
    out: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} twice"
        out[family.name] = family
    return out


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    family = families[name]
    suffix = "_total" if family.type == "counter" else ""
    found = [s.value for s in family.samples
             if s.name == name + suffix and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


async def test_metrics_show_the_slaves_tasks_resources_and_libproc_counters(
        pair: tuple[UPID, Master, Slave]) -> None:
    address, master, slave = pair
    master.launch("long", "sleep 30", cpus=1.5)
    await until(lambda: pb.RUNNING in master.states)
    await until(lambda: slave.executor is not None and all(
        t.pid for t in slave.executor.running()))
    m = await scrape(address.port)
    me = {"slave": slave.id}
    assert value(m, "slave_tasks", state="running", **me) == 1
    assert value(m, "slave_tasks", state="staging", **me) == 0
    assert value(m, "slave_task_launches", **me) == 1
    assert value(m, "slave_cpus", **me) == 3 and value(m, "slave_cpus_used", **me) == 1.5
    assert value(m, "slave_mem_bytes", **me) == 2048 * 2**20
    assert value(m, "slave_mem_used_bytes", **me) == 64 * 2**20
    assert value(m, "slave_registered", **me) == 1
    assert value(m, "slave_isolation_info", mode="none", **me) == 1
    assert value(m, "slave_gc_sandboxes_pending", **me) == 0
    assert value(m, "slave_gc_delay_seconds", **me) == 86400
    # master and slave share this OS process: their messages are libproc's local ones
    assert value(m, "libproc_messages_local") >= 3  # registration, its answer, the launch
    assert m["libproc_messages_local"].type == "counter"
    master.signed(pb.KillTaskMessage(task_id=pb.TaskID(value="long")))
    master.launch("quick", "true")
    await until(lambda: master.states.count(pb.KILLED) == 1
                and master.states.count(pb.FINISHED) == 1, 30)
    m = await scrape(address.port)
    assert value(m, "slave_tasks", state="running", **me) == 0
    assert value(m, "slave_task_launches", **me) == 2
    assert value(m, "slave_task_endings", state="killed", **me) == 1
    assert value(m, "slave_task_endings", state="finished", **me) == 1
    assert value(m, "slave_task_endings", state="failed", **me) == 0
    assert value(m, "slave_gc_sandboxes_pending", **me) == 2
    assert value(m, "slave_task_cpu_seconds", **me) >= 0


async def test_unacknowledged_updates_show_as_resends(
        pair: tuple[UPID, Master, Slave]) -> None:
    address, master, slave = pair
    master.acking = False
    master.launch("t", "true")
    await until(lambda: master.states.count(pb.FINISHED) >= 2, 30)  # sent again
    m = await scrape(address.port)
    me = {"slave": slave.id}
    assert value(m, "slave_status_update_resends", **me) >= 1
    assert value(m, "slave_status_updates_unacknowledged", **me) == 2
    assert value(m, "slave_status_updates_sent", **me) == len(master.states)


async def test_two_slaves_in_one_process_give_one_valid_exposition(
        pair: tuple[UPID, Master, Slave], tmp_path: Path) -> None:
    address, master, first = pair
    second = Slave(SlaveConfig(master=master.pid, work_dir=tmp_path / "second",
                               isolation="none", master_timeout=1e9))
    libproc.spawn(second)
    m = await scrape(address.port)
    slaves = {s.labels["slave"] for s in m["slave_registered"].samples}
    assert slaves == {first.id, second.id}
    libproc.terminate(second.pid)
    await libproc.wait(second.pid)
    m = await scrape(address.port)
    assert {s.labels["slave"] for s in m["slave_registered"].samples} == {first.id}
