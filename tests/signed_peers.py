"""Test peers that speak the cluster's authenticated protocol (protos/auth.py) by hand.

`SignedSlave` plays a slave against a real master, `SignedMaster` a master against a real
slave. Both record every message they receive with whether its signature checked out, so
tests can assert what a real peer would have accepted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from libproc import UPID, ProtobufProcess
from libproc.wire import encode_message
from protos import auth
from protos import cluster_pb2 as pb

COMMANDS = (pb.LaunchTasksMessage, pb.KillTaskMessage, pb.PingSlaveMessage,
            pb.StatusUpdateAcknowledgementMessage, pb.ShutdownSlaveMessage)


class SignedSlave(ProtobufProcess):
    """The slave side: registers, confirms with a signed pong, signs what it sends."""

    def __init__(self, secret: str | None = None, prefix: str = "fakeslave") -> None:
        super().__init__(prefix=prefix)
        self.secret = secret
        self.slave_id = ""
        self.credential: bytes | None = None
        self.session: auth.Session | None = None
        self.sequence = 0
        self.nonce = b""
        self.got: list[Any] = []
        self.forged: list[Any] = []  # received, but not signed by our session
        self.confirm = True  # answer a registration with a signed pong

    def initialize(self) -> None:
        self.install(pb.SlaveRegisteredMessage, self._registered)
        self.install(pb.SlaveReregisteredMessage, self._reregistered)
        self.install(pb.RegistrationRefusedMessage, lambda _sender, msg: self.got.append(msg))
        for kind in COMMANDS:
            self.install(kind, self._command)

    # -- sending ----------------------------------------------------------------------------

    def register(self, master: UPID, cpus: float = 2, mem: float = 1024,
                 hostname: str = "") -> bytes:
        self.nonce = auth.new_nonce()
        msg = pb.RegisterSlaveMessage(resources=pb.Resources(cpus=cpus, mem=mem),
                                      hostname=hostname, nonce=self.nonce)
        if self.secret:
            auth.seal(msg, auth.registration_key(self.secret), auth.SLAVE_TO_MASTER, 1)
        self.send(master, msg)
        return self.nonce

    def reregister(self, master: UPID, tasks: list[pb.RunningTask], cpus: float = 2,
                   mem: float = 1024) -> None:
        assert self.credential is not None, "register first"
        self.sequence += 1
        self.nonce = auth.new_nonce()
        msg = pb.ReregisterSlaveMessage(
            slave_id=pb.SlaveID(value=self.slave_id), resources=pb.Resources(cpus=cpus, mem=mem),
            tasks=tasks, nonce=self.nonce, sequence=self.sequence)
        auth.seal(msg, self.credential, auth.SLAVE_TO_MASTER, self.sequence)
        self.send(master, msg)

    def signed(self, to: UPID, msg: Any) -> None:
        assert self.session is not None, "register first"
        self.session.seal(msg)
        self.send(to, msg)

    # -- receiving --------------------------------------------------------------------------

    def _registered(self, sender: UPID, msg: pb.SlaveRegisteredMessage) -> None:
        if msg.nonce != self.nonce:
            self.forged.append(msg)
            return
        credential = (auth.slave_key(self.secret, msg.slave_id.value, msg.salt)
                      if self.secret else msg.key)
        self._start_session(sender, msg, credential)

    def _reregistered(self, sender: UPID, msg: pb.SlaveReregisteredMessage) -> None:
        if msg.nonce != self.nonce or self.credential is None:
            self.forged.append(msg)
            return
        self._start_session(sender, msg, self.credential)

    def _start_session(self, sender: UPID, msg: Any, credential: bytes) -> None:
        session = auth.Session(auth.session_key(credential, msg.nonce, msg.master_nonce),
                               auth.SLAVE_TO_MASTER)
        if not session.open(msg):
            self.forged.append(msg)
            return
        self.slave_id, self.credential, self.session = msg.slave_id.value, credential, session
        self.got.append(msg)
        if self.confirm:
            self.signed(sender, pb.PongSlaveMessage(slave_id=pb.SlaveID(value=self.slave_id)))

    def _command(self, sender: UPID, msg: Any) -> None:
        if self.session is None or not self.session.open(msg):
            self.forged.append(msg)
            return
        self.got.append(msg)
        self.on_command(sender, msg)

    def on_command(self, sender: UPID, msg: Any) -> None:
        """Override to react to a correctly signed command (default: answer pings)."""
        if isinstance(msg, pb.PingSlaveMessage) and msg.connected:
            self.signed(sender, pb.PongSlaveMessage(slave_id=pb.SlaveID(value=self.slave_id)))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.got if isinstance(m, kind)]


class SignedMaster(ProtobufProcess):
    """The master side, for slave tests: answers registrations, signs its commands."""

    def __init__(self, secret: str | None = None, slave_id: str = "S1",
                 id: str = "master") -> None:  # noqa: A002
        super().__init__(id)
        self.secret = secret
        self.slave_id = slave_id
        self.credential = auth.new_key()
        self.session: auth.Session | None = None
        self.slave: UPID | None = None
        self.got: list[Any] = []
        self.forged: list[Any] = []

    def initialize(self) -> None:
        self.install(pb.RegisterSlaveMessage, self._register)
        self.install(pb.ReregisterSlaveMessage, self._reregister)
        for kind in (pb.StatusUpdateMessage, pb.ReportProgressMessage, pb.PongSlaveMessage,
                     pb.UnregisterSlaveMessage):
            self.install(kind, self._from_slave)

    def _answer(self, sender: UPID, answer: Any, nonce: bytes) -> None:
        answer.nonce = nonce
        answer.master_nonce = auth.new_nonce()
        self.session = auth.Session(auth.session_key(self.credential, nonce,
                                                     answer.master_nonce),
                                    auth.MASTER_TO_SLAVE)
        self.slave = sender
        self.signed(answer)

    def _register(self, sender: UPID, msg: pb.RegisterSlaveMessage) -> None:
        answer = pb.SlaveRegisteredMessage(slave_id=pb.SlaveID(value=self.slave_id))
        if self.secret:
            answer.salt = auth.new_nonce()
            self.credential = auth.slave_key(self.secret, self.slave_id, answer.salt)
        else:
            answer.key = self.credential
        self._answer(sender, answer, msg.nonce)

    def _reregister(self, sender: UPID, msg: pb.ReregisterSlaveMessage) -> None:
        if auth.verify(msg, self.credential, auth.SLAVE_TO_MASTER) is None:
            self.forged.append(msg)
            return
        self.got.append(msg)
        self._answer(sender, pb.SlaveReregisteredMessage(
            slave_id=pb.SlaveID(value=self.slave_id)), msg.nonce)

    def _from_slave(self, sender: UPID, msg: Any) -> None:
        if self.session is None or not self.session.open(msg):
            self.forged.append(msg)
            return
        self.got.append(msg)
        self.on_message(sender, msg)

    def on_message(self, sender: UPID, msg: Any) -> None:
        """Override to react to a correctly signed message (default: acknowledge updates)."""
        if isinstance(msg, pb.StatusUpdateMessage):
            self.signed(pb.StatusUpdateAcknowledgementMessage(
                slave_id=msg.update.slave_id, task_id=msg.update.task_id,
                uuid=msg.update.uuid))

    def signed(self, msg: Any) -> None:
        assert self.session is not None and self.slave is not None
        self.session.seal(msg)
        self.send(self.slave, msg)

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.got if isinstance(m, kind)]


ATTACKER = "127.0.0.2"  # a second loopback address: where forged messages come from


async def forge(target: UPID, msg: Any, sender: UPID | str, *, body: bytes | None = None,
                copies: int = 1) -> list[bytes]:
    """Send `msg` (or raw `body` under its name) `copies` times to `target` over one raw
    connection from 127.0.0.2, claiming to be `sender`; the status lines, in order."""
    reader, writer = await asyncio.open_connection(target.host, target.port,
                                                   local_addr=(ATTACKER, 0))
    payload = msg.SerializeToString() if body is None else body
    one = encode_message(str(sender), target.id, msg.DESCRIPTOR.full_name,
                         f"{target.host}:{target.port}", payload)
    writer.write(one * copies)
    await writer.drain()
    statuses = []
    for _ in range(copies):
        head = await reader.readuntil(b"\r\n\r\n")
        statuses.append(head.split(b"\r\n", 1)[0])
    writer.close()
    return statuses
