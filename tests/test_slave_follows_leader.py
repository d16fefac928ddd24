"""A slave following the leading master (`--master zk://…`, slave/registration.py): a new
leader means re-registering with it, running tasks included; a standby's unsigned "I do not
lead" only ever sends the slave back to ZooKeeper, never to a master it names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import libproc
from libproc.metrics import metrics
from protos import cluster_pb2 as pb
from protos.leader_info import LeaderInfo
from signed_peers import SignedMaster, forge
from slave.process import Slave, SlaveConfig
from waiting import until


class Follower:
    """Stands in for slave/leader.py's follower (its ZooKeeper side is tests/ha's):
    counts the re-reads the slave asks for."""

    def __init__(self) -> None:
        self.refreshes = 0

    def refresh(self) -> bool:
        self.refreshes += 1
        return True


@dataclass
class Two:
    old: SignedMaster
    new: SignedMaster
    slave: Slave

    def info(self, master: SignedMaster) -> LeaderInfo:
        return LeaderInfo(str(master.pid), f"http://127.0.0.1:{master.pid.port}")

    async def changed(self, master: SignedMaster | None, member: str | None) -> None:
        leader = self.info(master) if master is not None else None
        await libproc.dispatch(self.slave.pid, self.slave.registration.leader_changed, leader,
                               member)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    """A slave registered with `old`; `new` shares its credentials (one database)."""
    await libproc.start(host="127.0.0.1", port=0)
    try:
        old, new = SignedMaster(id="master"), SignedMaster(id="master2")
        libproc.spawn(old)
        libproc.spawn(new)
        slave = Slave(SlaveConfig(master=old.pid, work_dir=tmp_path / "work",
                                  progress_interval=0.1))
        libproc.spawn(slave)
        await until(lambda: slave.mode == "registered" and bool(old.of(pb.PongSlaveMessage)))
        new.credential = old.credential
        pair = Two(old, new, slave)
        await pair.changed(old, "json.info_0000000001")  # the follower's first news
        yield pair
    finally:
        await libproc.stop()


async def test_a_new_leader_gets_a_reregistration_with_the_running_tasks(two: Two) -> None:
    two.old.signed(pb.LaunchTasksMessage(id=1, tasks=[pb.TaskInfo(
        name="long", task_id=pb.TaskID(value="7"), command="sleep 30", attempt=1)]))
    await until(lambda: "7" in two.slave.tasks)
    await two.changed(two.new, "json.info_0000000002")
    await until(lambda: bool(two.new.of(pb.ReregisterSlaveMessage))
                and two.slave.mode == "registered" and two.slave.config.master == two.new.pid)
    (again,) = two.new.of(pb.ReregisterSlaveMessage)
    assert again.slave_id.value == "S1"
    assert [t.task.task_id.value for t in again.tasks] == ["7"]
    await until(lambda: bool(two.new.of(pb.PongSlaveMessage)))  # confirmed, signed anew
    # The old master is no longer obeyed, even with the old session's signature.
    refused = two.slave._counters["commands_refused"]
    two.old.signed(pb.KillTaskMessage(task_id=pb.TaskID(value="7")))
    await until(lambda: two.slave._counters["commands_refused"] > refused)
    assert "7" in two.slave.tasks
    assert not two.old.of(pb.ReregisterSlaveMessage)


async def test_no_leader_or_the_same_leader_changes_nothing(two: Two) -> None:
    await two.changed(None, None)  # a failover under way: keep the last master
    await two.changed(two.old, "json.info_0000000001")  # the same leader, same member
    await asyncio.sleep(0.3)
    assert two.slave.config.master == two.old.pid and two.slave.mode == "registered"
    assert not two.old.of(pb.ReregisterSlaveMessage)
    await two.changed(two.old, "json.info_0000000005")  # it leads anew: it forgot our session
    await until(lambda: bool(two.old.of(pb.ReregisterSlaveMessage)))


async def test_a_not_leader_hint_only_sends_the_slave_back_to_zookeeper(two: Two) -> None:
    follower = Follower()
    two.slave.registration.follower = follower  # type: ignore[assignment]
    before = metrics.counters.get("slave/not_leader_hints", 0)
    forged = pb.NotLeaderMessage(leader=str(two.new.pid), reason="trust me")
    statuses = await forge(two.slave.pid, forged, two.old.pid, copies=3)
    assert statuses == [b"HTTP/1.1 202 Accepted"] * 3
    await until(lambda: metrics.counters.get("slave/not_leader_hints", 0) == before + 3)
    assert follower.refreshes == 3  # the follower itself allows one a second
    await asyncio.sleep(0.3)
    assert two.slave.config.master == two.old.pid and two.slave.mode == "registered"
    assert not two.new.of(pb.ReregisterSlaveMessage)


async def test_without_a_follower_a_not_leader_hint_is_only_logged(
        two: Two, caplog: pytest.LogCaptureFixture) -> None:
    await forge(two.slave.pid, pb.NotLeaderMessage(leader="x" * 500 + "\n\x1b"), two.old.pid)
    await until(lambda: "standby master" in caplog.text)
    assert "--master zk://" in caplog.text and "\x1b" not in caplog.text
    assert two.slave.config.master == two.old.pid and two.slave.mode == "registered"
