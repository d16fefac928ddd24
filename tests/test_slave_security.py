"""A slave obeys commands only from its master *and* with the master's registration token.

Libprocess-From can be written by anyone who reaches the slave's port, so the sender alone
proves nothing. These tests forge it over a raw socket and check nothing runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, ProtobufProcess
from libproc.wire import encode_message
from protos import cluster_pb2 as pb
from slave.process import Slave, SlaveConfig
from waiting import until


class FakeMaster(ProtobufProcess):
    """A real libproc process answering the slave's registration with a token."""

    TOKEN = b"0123456789abcdef"

    def __init__(self) -> None:
        super().__init__("master")
        self.updates: list[pb.StatusUpdate] = []
        self.slave: UPID | None = None

    def initialize(self) -> None:
        self.install(pb.RegisterSlaveMessage, self._register)
        self.install(pb.StatusUpdateMessage, self._update, "update")

    def _register(self, sender: UPID, msg: Any) -> None:
        self.slave = sender
        self.reply(pb.SlaveRegisteredMessage(slave_id=pb.SlaveID(value="S1"),
                                             token=self.TOKEN))

    def _update(self, sender: UPID, update: pb.StatusUpdate) -> None:
        self.updates.append(update)
        self.reply(pb.StatusUpdateAcknowledgementMessage(
            slave_id=update.slave_id, task_id=update.task_id, uuid=update.uuid))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[FakeMaster, Slave, Path]]:
    address = await libproc.start(host="127.0.0.1", port=0)
    master = FakeMaster()
    libproc.spawn(master)
    slave = Slave(SlaveConfig(master=address.with_id("master"), work_dir=tmp_path / "work",
                              progress_interval=0.1))
    libproc.spawn(slave)
    try:
        await until(lambda: slave.mode == "registered")
        yield master, slave, tmp_path
    finally:
        await libproc.stop()


def launch(task_id: str, command: str, token: bytes) -> pb.LaunchTasksMessage:
    return pb.LaunchTasksMessage(id=1, token=token, tasks=[pb.TaskInfo(
        name=task_id, task_id=pb.TaskID(value=task_id), command=command, attempt=1)])


async def forge(slave: Slave, sender: UPID, message: pb.LaunchTasksMessage) -> bytes:
    """Send `message` to the slave over a raw socket, claiming to be `sender`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", slave.pid.port)
    writer.write(encode_message(str(sender), slave.pid.id, message.DESCRIPTOR.full_name,
                                f"127.0.0.1:{slave.pid.port}", message.SerializeToString()))
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return status


async def test_forged_launch_without_token_is_refused(pair: Any) -> None:
    master, slave, tmp = pair
    marker = tmp / "pwned"
    status = await forge(slave, master.pid, launch("evil", f"touch {marker}", b""))
    assert status.startswith(b"HTTP/1.1 202")  # delivered, as libprocess would
    await until(lambda: slave._counters["commands_refused"] == 1)
    await asyncio.sleep(0.3)
    assert not marker.exists()
    assert "evil" not in slave.tasks


async def test_forged_launch_with_wrong_token_is_refused(pair: Any) -> None:
    master, slave, tmp = pair
    marker = tmp / "pwned"
    await forge(slave, master.pid, launch("evil", f"touch {marker}", b"guessed-token!!!"))
    await until(lambda: slave._counters["commands_refused"] == 1)
    await asyncio.sleep(0.3)
    assert not marker.exists()


async def test_launch_with_the_registration_token_runs(pair: Any) -> None:
    master, slave, tmp = pair
    marker = tmp / "ok"
    await forge(slave, master.pid, launch("good", f"touch {marker}", FakeMaster.TOKEN))
    await until(lambda: any(u.state == pb.FINISHED for u in master.updates))
    assert marker.exists()
    assert slave._counters["commands_refused"] == 0
