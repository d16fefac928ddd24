"""What a slave tells its master about isolation and usage, over real libproc messages: the
isolation in its registration, usage in progress reports, the final usage and the limit's
message in the terminal status update; and /vars and /monitor over HTTP."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID
from protos import cluster_pb2 as pb
from signed_peers import SignedMaster
from slave.process import Slave, SlaveConfig
from test_isolation_kernel import make_isolator
from waiting import until


class RecordingMaster(SignedMaster):
    """Registers the slave; records registrations, progress reports and status updates."""

    def __init__(self) -> None:
        super().__init__()
        self.registrations: list[pb.RegisterSlaveMessage] = []
        self.reports: list[pb.Task] = []
        self.updates: list[pb.StatusUpdate] = []

    def _register(self, sender: UPID, msg: pb.RegisterSlaveMessage) -> None:
        self.registrations.append(msg)
        super()._register(sender, msg)

    def on_message(self, sender: UPID, msg: Any) -> None:
        if isinstance(msg, pb.ReportProgressMessage):
            self.reports.extend(msg.tasks)
        elif isinstance(msg, pb.StatusUpdateMessage):
            self.updates.append(msg.update)
        super().on_message(sender, msg)

    def launch(self, task_id: str, command: str, cpus: float, mem: float) -> None:
        self.signed(pb.LaunchTasksMessage(id=1, tasks=[pb.TaskInfo(
            name=task_id, task_id=pb.TaskID(value=task_id), command=command, attempt=1,
            resources=pb.Resources(cpus=cpus, mem=mem))]))

    def terminal(self, task_id: str) -> pb.StatusUpdate | None:
        done = [u for u in self.updates if u.task_id.value == task_id and u.state != pb.RUNNING]
        return done[-1] if done else None


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[RecordingMaster, Slave]]:
    make_isolator(tmp_path / "probe").close()  # NOT RUN / FAIL here when there are no cgroups
    address = await libproc.start(host="127.0.0.1", port=0)
    master = RecordingMaster()
    libproc.spawn(master)
    slave = Slave(SlaveConfig(master=master.pid, work_dir=tmp_path / "work", kill_grace=0.5,
                              progress_interval=0.2, master_timeout=1e6, task_pids_max=100))
    libproc.spawn(slave)
    try:
        await until(lambda: slave.mode == "registered")
        slave.port = address.port  # type: ignore[attr-defined]
        yield master, slave
    finally:
        await libproc.dispatch(slave.pid, "shutdown")
        await libproc.stop()


def get(slave: Slave, path: str) -> bytes:
    url = f"http://127.0.0.1:{slave.port}/{slave.pid.id}{path}"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: bytes = resp.read()
    return data


async def fetch(slave: Slave, path: str) -> bytes:
    import asyncio

    return await asyncio.to_thread(get, slave, path)


async def test_registration_vars_and_monitor_say_how_tasks_are_isolated(
    pair: tuple[RecordingMaster, Slave],
) -> None:
    master, slave = pair
    (reg,) = master.registrations
    assert reg.isolation.mode == "cgroups" and reg.isolation.cgroup_version in ("v1", "v2")
    assert (reg.isolation.cpu_limit, reg.isolation.task_pids_max) == ("soft", 100)
    text = (await fetch(slave, "/vars")).decode()
    lines = dict(line.split(" ", 1) for line in text.splitlines())
    assert lines["isolation"] == "cgroups"
    assert lines["cgroup_version"] == reg.isolation.cgroup_version
    assert lines["task_pids_max"] == "100" and lines["cpu_limit"] == "soft"

    master.launch("busy", "python3 -c 'x = b\"1\" * (50 << 20)\nwhile True: pass'", 0.5, 128)
    await until(lambda: any(t.HasField("usage") and t.usage.mem_mib > 40
                            for t in master.reports if t.task_id.value == "busy"), timeout=20)
    monitor: dict[str, Any] = json.loads(await fetch(slave, "/monitor"))
    assert monitor["isolation"]["isolation"] == "cgroups"
    (task,) = monitor["tasks"]
    assert task["id"] == "busy" and task["attempt"] == 1
    assert task["limits"] == {"cpus": 0.5, "mem_mib": 128.0, "pids_max": 100,
                              "cpu_limit": "soft"}
    assert task["usage"]["cpu_seconds"] > 0 and 40 < task["usage"]["mem_mib"] < 128
    assert task["usage"]["source"].startswith("cgroups")
    report = [t for t in master.reports if t.task_id.value == "busy" and t.HasField("usage")][-1]
    assert report.usage.source.startswith("cgroups") and report.state == pb.RUNNING

    assert slave.executor is not None and slave.executor.kill("busy")
    await until(lambda: master.terminal("busy"))
    final = master.terminal("busy")
    assert final is not None and final.state == pb.KILLED and final.HasField("usage")
    assert final.usage.cpu_seconds >= report.usage.cpu_seconds > 0
    assert final.usage.mem_peak_mib >= 40


async def test_a_task_over_its_mem_ends_failed_and_the_master_is_told_why(
    pair: tuple[RecordingMaster, Slave],
) -> None:
    master, slave = pair
    master.launch("hog", "python3 -c 'x = b\"1\" * (300 << 20)'", 1, 64)
    await until(lambda: master.terminal("hog"), timeout=20)
    final = master.terminal("hog")
    assert final is not None and final.state == pb.FAILED
    assert final.message == "memory limit exceeded (64 MiB)"
    assert final.usage.mem_peak_mib <= 64.5
    # The slave stays healthy: the next task runs.
    master.launch("next", "echo fine", 1, 64)
    await until(lambda: master.terminal("next"))
    assert master.terminal("next").state == pb.FINISHED  # type: ignore[union-attr]
