"""The master actor in one OS process with a real SQLite file and a libproc peer as slave.

Heartbeats and timeouts run on the paused Clock, so they are instant and deterministic.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock
from master.api import parse_submit
from master.process import Master, MasterConfig
from master.store import Store
from protos import cluster_pb2 as pb
from signed_peers import SignedSlave
from waiting import until


class FakeSlave(SignedSlave):
    """A real libproc process speaking the slave side of the protocol, recording everything."""

    def __init__(self, db_path: Path | None = None, secret: str | None = None) -> None:
        super().__init__(secret=secret)
        self.answer_pings = True
        self.db_path = db_path
        self.state_at_ack: dict[bytes, str] = {}

    def on_command(self, sender: UPID, msg: Any) -> None:
        if isinstance(msg, pb.PingSlaveMessage) and msg.connected and self.answer_pings:
            self.signed(sender, pb.PongSlaveMessage(slave_id=pb.SlaveID(value=self.slave_id)))
        if (isinstance(msg, pb.StatusUpdateAcknowledgementMessage)
                and self.db_path is not None):  # what is durable at the moment of the ack
            with sqlite3.connect(self.db_path) as conn:
                row = conn.execute("SELECT state FROM tasks WHERE id = ?",
                                   (msg.task_id.value,)).fetchone()
            self.state_at_ack[msg.uuid] = row[0] if row else "MISSING"

    def update(self, master: UPID, task_id: str, state: int, attempt: int = 1,
               exit_code: int | None = None) -> bytes:
        u = pb.StatusUpdate(task_id=pb.TaskID(value=task_id), state=state,
                            uuid=uuid.uuid4().bytes, attempt=attempt,
                            slave_id=pb.SlaveID(value=self.slave_id))
        if exit_code is not None:
            u.exit_code = exit_code
        self.signed(master, pb.StatusUpdateMessage(update=u))
        return u.uuid


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Master, FakeSlave, Path]]:
    await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    db = tmp_path / "master.db"
    store = Store.open(f"sqlite:///{db}")
    master = Master(store, MasterConfig(heartbeat_interval=1.0, slave_timeout=5.0))
    libproc.spawn(master)
    slave = FakeSlave(db)
    libproc.spawn(slave)
    try:
        yield master, slave, db
    finally:
        await libproc.stop()
        await store.close()
        Clock.reset()


async def register(master: Master, slave: FakeSlave, cpus: float = 2, mem: float = 1024) -> None:
    slave.register(master.pid, cpus=cpus, mem=mem)
    await until(lambda: bool(slave.of(pb.SlaveRegisteredMessage)))
    await until(lambda: slave.slave_id in master.slaves)  # confirmed by its signed pong


async def submit(master: Master, *items: dict[str, Any]) -> list[str]:
    records = await master.submit(parse_submit(list(items)))
    return [r.id for r in records]


async def test_registered_slave_gets_launch_after_submit(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "true", "cpus": 1, "mem": 10})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    launch = slave.of(pb.LaunchTasksMessage)[0]
    assert [t.task_id.value for t in launch.tasks] == [tid]
    assert launch.tasks[0].attempt == 1
    assert master.tasks[tid].state == "STAGING"


async def test_tasks_wait_pending_until_resources_free(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave, cpus=1)
    first, second = await submit(master, {"command": "a", "cpus": 1}, {"command": "b", "cpus": 1})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    assert master.tasks[first].state == "STAGING"
    assert master.tasks[second].state == "PENDING"
    slave.update(master.pid, first, pb.FINISHED, exit_code=0)
    await until(lambda: master.tasks[second].state == "STAGING")
    assert master.tasks[first].state == "FINISHED"


async def test_terminal_update_is_acknowledged_only_after_commit(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "true"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    done = slave.update(master.pid, tid, pb.FINISHED, exit_code=0)
    await until(lambda: done in slave.state_at_ack)
    assert slave.state_at_ack[done] == "FINISHED"


async def test_duplicate_and_late_updates_change_nothing_but_are_acked(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "true"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    uuids = [slave.update(master.pid, tid, pb.RUNNING),
             slave.update(master.pid, tid, pb.FINISHED, exit_code=0),
             slave.update(master.pid, tid, pb.FINISHED, exit_code=0),
             slave.update(master.pid, tid, pb.RUNNING),
             slave.update(master.pid, tid, pb.FAILED, exit_code=1)]
    await until(lambda: len(slave.of(pb.StatusUpdateAcknowledgementMessage)) == 5)
    rec = master.tasks[tid]
    assert (rec.state, rec.exit_code) == ("FINISHED", 0)
    assert {a.uuid for a in slave.of(pb.StatusUpdateAcknowledgementMessage)} == set(uuids)


async def test_update_from_an_old_attempt_is_ignored(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "true"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.update(master.pid, tid, pb.FAILED, attempt=7, exit_code=1)
    await until(lambda: len(slave.of(pb.StatusUpdateAcknowledgementMessage)) == 1)
    assert master.tasks[tid].state == "STAGING"


async def test_silent_slave_is_lost_after_timeout_and_task_requeued(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "sleep 100", "retries": 1})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.update(master.pid, tid, pb.RUNNING)
    await until(lambda: master.tasks[tid].state == "RUNNING")
    slave.answer_pings = False
    Clock.advance(3.0)
    await Clock.settle()
    assert master.slaves[slave.slave_id].state == "active"  # not yet: 5 s timeout
    for _ in range(4):
        Clock.advance(1.0)
        await Clock.settle()
    assert master.slaves[slave.slave_id].state == "lost"
    rec = master.tasks[tid]
    assert rec.state == "PENDING" and "lost" in rec.message  # one retry left: re-queued
    assert master.slaves[slave.slave_id].used_cpus == 0


async def test_lost_task_without_retries_stays_lost(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "sleep 100"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.answer_pings = False
    for _ in range(7):
        Clock.advance(1.0)
        await Clock.settle()
    assert master.tasks[tid].state == "LOST"


async def test_message_from_unknown_slave_asks_it_to_reregister(cluster: Any) -> None:
    master, slave, _ = cluster
    slave.send(master.pid, pb.ReportProgressMessage(tasks=[]))
    await until(lambda: any(isinstance(m, pb.PingSlaveMessage) for m in slave.forged))
    ping = next(m for m in slave.forged if isinstance(m, pb.PingSlaveMessage))
    assert ping.connected is False  # unsigned: it can only ever cause a re-registration


async def test_reregistration_kills_tasks_the_master_declared_lost(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "sleep 100"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    info = slave.of(pb.LaunchTasksMessage)[0].tasks[0]
    slave.answer_pings = False
    for _ in range(7):
        Clock.advance(1.0)
        await Clock.settle()
    assert master.tasks[tid].state == "LOST"
    slave.reregister(master.pid, [pb.RunningTask(task=info, state=pb.RUNNING)])
    await until(lambda: bool(slave.of(pb.SlaveReregisteredMessage)))
    answer = slave.of(pb.SlaveReregisteredMessage)[0]
    assert [t.value for t in answer.kill_tasks] == [tid]
    assert master.tasks[tid].state == "LOST"  # not resurrected


async def test_progress_report_reaches_task_record(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "x"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.update(master.pid, tid, pb.RUNNING)
    await until(lambda: master.tasks[tid].state == "RUNNING")
    slave.signed(master.pid, pb.ReportProgressMessage(
        slave_id=pb.SlaveID(value=slave.slave_id),
        tasks=[pb.Task(name="x", task_id=pb.TaskID(value=tid), progress=0.42, attempt=1)]))
    await until(lambda: abs(master.tasks[tid].progress - 0.42) < 1e-6)


async def test_wrong_secret_is_refused_and_nothing_registers(tmp_path: Path) -> None:
    await libproc.start(host="127.0.0.1", port=0)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        master = Master(store, MasterConfig(secret="s3cret"))
        libproc.spawn(master)
        wrong, unsigned = FakeSlave(secret="wrong"), FakeSlave()
        right = FakeSlave(secret="s3cret")
        for s in (wrong, unsigned, right):
            libproc.spawn(s)
        wrong.register(master.pid, cpus=1, mem=1)
        unsigned.register(master.pid, cpus=1, mem=1)
        await until(lambda: bool(wrong.of(pb.RegistrationRefusedMessage))
                    and bool(unsigned.of(pb.RegistrationRefusedMessage)))
        assert "secret" in wrong.of(pb.RegistrationRefusedMessage)[0].reason
        assert master.slaves == {}
        right.register(master.pid, cpus=1, mem=1)
        await until(lambda: right.slave_id in master.slaves)
        assert len(master.slaves) == 1
    finally:
        await libproc.stop()
        await store.close()


async def test_task_that_finished_during_outage_ends_finished_not_lost(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave)
    [tid] = await submit(master, {"command": "true"})
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.update(master.pid, tid, pb.RUNNING)
    await until(lambda: master.tasks[tid].state == "RUNNING")
    info = slave.of(pb.LaunchTasksMessage)[0].tasks[0]
    # The slave re-registers reporting the task as ended (its update not yet acknowledged).
    slave.reregister(master.pid, [pb.RunningTask(
        task=pb.TaskInfo(name="", task_id=info.task_id, command="", attempt=1),
        state=pb.FINISHED)])
    await until(lambda: bool(slave.of(pb.SlaveReregisteredMessage)))
    assert master.tasks[tid].state == "RUNNING"  # not declared lost
    assert list(slave.of(pb.SlaveReregisteredMessage)[0].kill_tasks) == []
    slave.update(master.pid, tid, pb.FINISHED, exit_code=0)
    await until(lambda: master.tasks[tid].state == "FINISHED")
    assert master.tasks[tid].exit_code == 0


async def test_a_burst_of_ended_tasks_costs_one_scheduling_pass(cluster: Any) -> None:
    master, slave, _ = cluster
    await register(master, slave, cpus=20)
    ids = await submit(master, *[{"command": "true", "cpus": 1} for _ in range(30)])
    await until(lambda: sum(len(m.tasks) for m in slave.of(pb.LaunchTasksMessage)) == 20)
    before = master._counters["scheduling_passes"]
    # Twenty terminal updates in one go: the queued ten are placed by a single pass.
    for tid in ids[:20]:
        slave.update(master.pid, tid, pb.FINISHED, exit_code=0)
    await until(lambda: all(master.tasks[t].state == "STAGING" for t in ids[20:]))
    assert master._counters["scheduling_passes"] - before <= 3
    assert [master.tasks[t].state for t in ids[:20]] == ["FINISHED"] * 20
    assert master.slaves[slave.slave_id].used_cpus == 10


async def test_nothing_is_launched_while_the_store_cannot_make_it_staging(cluster: Any) -> None:
    master, slave, db = cluster
    [tid] = await submit(master, {"command": "true"})  # no slave yet: PENDING
    moved = db.with_name("moved.db")
    db.rename(moved)  # the database file is gone from its path: writes must fail
    try:
        await register(master, slave)
        for _ in range(3):
            Clock.advance(1.0)
            await Clock.settle()
        assert slave.of(pb.LaunchTasksMessage) == []
        assert master.tasks[tid].state == "PENDING" and master.tasks[tid].attempts == 0
    finally:
        moved.rename(db)
    await until(lambda: master.store.fault() is None, timeout=15)  # its probe sees it back
    Clock.advance(1.0)  # the next heartbeat schedules again
    await Clock.settle()
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)), timeout=15)
    assert master.tasks[tid].state == "STAGING" and master.tasks[tid].attempts == 1
