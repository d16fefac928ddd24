"""A slave obeys only messages its master signed with the session of its registration.

`Libprocess-From` can be written by anyone who reaches the slave's port, so the sender alone
proves nothing. These tests forge it over raw sockets from a second loopback address
(127.0.0.2) and check that nothing runs, nothing is killed, no session is replaced and no
result is dropped — and that the real master is still obeyed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID
from libproc.metrics import metrics
from libproc.wire import encode_message
from protos import auth
from protos import cluster_pb2 as pb
from signed_peers import SignedMaster
from slave.process import Slave, SlaveConfig
from waiting import until

ATTACKER = "127.0.0.2"


class Pair:
    def __init__(self, master: SignedMaster, slave: Slave, tmp: Path) -> None:
        self.master, self.slave, self.tmp = master, slave, tmp

    async def forge(self, msg: Any, sender: UPID | None = None) -> bytes:
        """Send `msg` to the slave from 127.0.0.2, claiming to be `sender` (the master)."""
        return await self.forge_bytes(msg.DESCRIPTOR.full_name, msg.SerializeToString(), sender)

    async def forge_bytes(self, name: str, body: bytes, sender: UPID | None = None) -> bytes:
        port = self.slave.pid.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(ATTACKER, 0))
        writer.write(encode_message(str(sender or self.master.pid), self.slave.pid.id, name,
                                    f"127.0.0.1:{port}", body))
        await writer.drain()
        status = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        return status

    def refused(self) -> int:
        return self.slave._counters["commands_refused"]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    await libproc.start(host="127.0.0.1", port=0)
    master = SignedMaster()
    libproc.spawn(master)
    slave = Slave(SlaveConfig(master=master.pid, work_dir=tmp_path / "work",
                              progress_interval=0.1))
    libproc.spawn(slave)
    try:
        await until(lambda: slave.mode == "registered" and bool(master.of(pb.PongSlaveMessage)))
        yield Pair(master, slave, tmp_path)
    finally:
        await libproc.stop()


def launch(task_id: str, command: str) -> pb.LaunchTasksMessage:
    return pb.LaunchTasksMessage(id=1, tasks=[pb.TaskInfo(
        name=task_id, task_id=pb.TaskID(value=task_id), command=command, attempt=1)])


async def settle_and_check_nothing_ran(marker: Path, pair: Pair) -> None:
    await asyncio.sleep(0.3)
    assert not marker.exists()
    assert "evil" not in pair.slave.tasks


async def test_forged_unsigned_launch_is_refused(pair: Pair) -> None:
    marker = pair.tmp / "pwned"
    before = metrics.snapshot().get("slave/messages_refused", 0)
    status = await pair.forge(launch("evil", f"touch {marker}"))
    assert status.startswith(b"HTTP/1.1 202")  # delivered, as libprocess would
    await until(lambda: pair.refused() == 1)
    await settle_and_check_nothing_ran(marker, pair)
    assert metrics.snapshot()["slave/messages_refused"] == before + 1


async def test_launch_signed_with_a_guessed_key_is_refused(pair: Pair) -> None:
    marker = pair.tmp / "pwned"
    msg = launch("evil", f"touch {marker}")
    auth.Session(auth.new_key(), auth.MASTER_TO_SLAVE).seal(msg)
    await pair.forge(msg)
    await until(lambda: pair.refused() == 1)
    await settle_and_check_nothing_ran(marker, pair)


async def test_forged_reregistered_answer_cannot_replace_the_session(pair: Pair) -> None:
    """The old attack: a SlaveReregisteredMessage 'from' the master with the attacker's
    key, then launches signed with it. The answer echoes no nonce of ours: refused."""
    marker = pair.tmp / "pwned"
    slave_id = pair.slave.slave_id or ""
    key, nonce, mnonce = auth.new_key(), auth.new_nonce(), auth.new_nonce()
    answer = pb.SlaveReregisteredMessage(slave_id=pb.SlaveID(value=slave_id), nonce=nonce,
                                         master_nonce=mnonce,
                                         kill_tasks=[pb.TaskID(value="1")])
    evil = auth.Session(auth.session_key(key, nonce, mnonce), auth.MASTER_TO_SLAVE)
    evil.seal(answer)
    await pair.forge(answer)
    evil_launch = launch("evil", f"touch {marker}")
    evil.seal(evil_launch)
    await pair.forge(evil_launch)
    await until(lambda: pair.refused() == 2)
    await settle_and_check_nothing_ran(marker, pair)
    # A forged first-registration answer with our own (unknown) nonce fails the same way.
    first = pb.SlaveRegisteredMessage(slave_id=pb.SlaveID(value="S666"), nonce=nonce,
                                      master_nonce=mnonce, key=key)
    await pair.forge(first)
    await until(lambda: pair.refused() == 3)
    assert pair.slave.slave_id == slave_id
    # The real master is still obeyed.
    ok = pair.tmp / "ok"
    pair.master.signed(launch("good", f"touch {ok}"))
    await until(lambda: any(m.update.state == pb.FINISHED
                            for m in pair.master.of(pb.StatusUpdateMessage)))
    assert ok.exists()


async def test_a_captured_launch_cannot_be_replayed(pair: Pair) -> None:
    counter = pair.tmp / "runs"
    msg = launch("t1", f"echo run >> {counter}")
    assert pair.master.session is not None
    pair.master.session.seal(msg)
    body = msg.SerializeToString()  # what a sniffer would have captured
    await pair.forge_bytes(msg.DESCRIPTOR.full_name, body)
    await until(lambda: any(m.update.state == pb.FINISHED
                            for m in pair.master.of(pb.StatusUpdateMessage)))
    await pair.forge_bytes(msg.DESCRIPTOR.full_name, body)
    await until(lambda: pair.refused() == 1)
    await asyncio.sleep(0.3)
    assert counter.read_text() == "run\n"


async def test_forged_kill_shutdown_and_ack_change_nothing(pair: Pair) -> None:
    pair.master.signed(launch("long", "sleep 30"))
    await until(lambda: "long" in pair.slave.tasks)
    await pair.forge(pb.KillTaskMessage(task_id=pb.TaskID(value="long")))
    await pair.forge(pb.ShutdownSlaveMessage(message="go away"))
    # A forged acknowledgement of the RUNNING update would make the slave drop it.
    running = next(m.update for m in pair.master.of(pb.StatusUpdateMessage)
                   if m.update.state == pb.RUNNING)
    pair.slave.unacked[running.uuid] = running  # (as if not yet acknowledged)
    await pair.forge(pb.StatusUpdateAcknowledgementMessage(
        slave_id=running.slave_id, task_id=running.task_id, uuid=running.uuid))
    await until(lambda: pair.refused() == 3)
    await asyncio.sleep(0.3)
    assert "long" in pair.slave.tasks and pair.slave.mode == "registered"
    assert running.uuid in pair.slave.unacked


async def test_forged_refusal_does_not_make_the_slave_forget_its_identity(pair: Pair) -> None:
    slave_id = pair.slave.slave_id
    await pair.forge(pb.RegistrationRefusedMessage(reason="x", nonce=auth.new_nonce(),
                                                   unknown_slave=True))
    await until(lambda: pair.refused() == 1)
    assert pair.slave.slave_id == slave_id and pair.slave.credential is not None


async def test_credential_is_kept_private(pair: Pair) -> None:
    path = pair.slave.config.work_dir / "slave.json"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    data = json.loads(path.read_text())
    assert bytes.fromhex(data["key"]) == pair.master.credential
    port = pair.slave.pid.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /{pair.slave.pid.id}/vars HTTP/1.1\r\nHost: x\r\n"
                 "Connection: close\r\n\r\n".encode())
    page = await reader.read()
    writer.close()
    assert b"200 OK" in page and pair.master.credential.hex().encode() not in page


async def test_signed_launch_from_the_master_runs(pair: Pair) -> None:
    marker = pair.tmp / "ok"
    pair.master.signed(launch("good", f"touch {marker}"))
    await until(lambda: any(m.update.state == pb.FINISHED
                            for m in pair.master.of(pb.StatusUpdateMessage)))
    assert marker.exists()
    assert pair.refused() == 0
    assert pair.master.forged == []  # everything the slave sent was signed
