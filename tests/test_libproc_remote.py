"""Loopback integration across OS processes and raw sockets: protobuf messages both ways,
FIFO over 10,000 pipelined messages, links (`exited` on a killed peer, on a refused connect,
relink), libproc's exact bytes on the wire, raw-socket senders, and bad peers."""

from __future__ import annotations

import asyncio
import contextlib
import select
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, ProtobufProcess, metrics, transport
from libproc.runtime import current
from protos import cluster_pb2 as pb

pytestmark = pytest.mark.timeout(60)

PEER = Path(__file__).parent / "peers" / "echo_peer.py"


# -- fixtures -------------------------------------------------------------------------


class Peer:
    """An echo_peer.py child process."""

    def __init__(self, log_path: Path) -> None:
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=Path(__file__).parent.parent,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"peer did not start: {line!r}; see {log_path}")
        self.pid = UPID.parse(line.split()[1])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    p = Peer(tmp_path_factory.mktemp("peer") / "peer.log")
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def own_peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "peer.log")
    try:
        yield p
    finally:
        p.stop()


class Client(ProtobufProcess):
    """Collects what comes back from the peer."""

    def __init__(self) -> None:
        super().__init__(prefix="client")
        self.got: list[tuple[str, UPID, Any]] = []
        self.exits: list[UPID] = []
        self.changed = asyncio.Event()

    def initialize(self) -> None:
        self.install(pb.LaunchTasksMessage, self._launch, "id", "tasks")
        self.install(pb.ReportProgressMessage, self._progress)
        for name in ("seq", "pong"):
            self.install(name, lambda s, b, n=name: self._note(n, s, b))

    def _launch(self, sender: UPID, launch_id: int, tasks: list[pb.TaskInfo]) -> None:
        self._note("launch", sender, (launch_id, tasks))

    def _progress(self, sender: UPID, message: pb.ReportProgressMessage) -> None:
        self._note("progress", sender, message)

    def _note(self, kind: str, sender: UPID, value: Any) -> None:
        self.got.append((kind, sender, value))
        self.changed.set()

    def exited(self, pid: UPID) -> None:
        self.exits.append(pid)
        self.changed.set()

    async def until(self, condition: Any, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def client(runtime: UPID) -> Client:
    c = Client()
    libproc.spawn(c)
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def task(name: str) -> pb.Task:
    return pb.Task(name=name, task_id=pb.TaskID(value=f"id-{name}"), progress=0.5)


# -- two OS processes -----------------------------------------------------------------


async def test_protobuf_messages_flow_both_ways_between_os_processes(
    peer: Peer, client: Client
) -> None:
    client.send(peer.pid, pb.ReportProgressMessage(tasks=[task("a"), task("b")]))
    await client.until(lambda: len(client.got) >= 1)
    kind, sender, (launch_id, infos) = client.got[0]
    assert (kind, sender, launch_id) == ("launch", peer.pid, 2)
    assert [(i.name, i.task_id.value, i.command) for i in infos] == [
        ("a", "id-a", "run a"),
        ("b", "id-b", "run b"),
    ]

    client.send(peer.pid, pb.LaunchTasksMessage(id=7, tasks=infos))
    await client.until(lambda: len(client.got) >= 2)
    kind, sender, progress = client.got[1]
    assert (kind, sender) == ("progress", peer.pid)
    assert [(t.name, t.progress) for t in progress.tasks] == [("a", 1.0), ("b", 1.0)]


async def test_order_is_preserved_over_10000_pipelined_messages(peer: Peer, client: Client) -> None:
    client.link(peer.pid)
    n = 10_000
    for i in range(n):
        client.send(peer.pid, "seq", b"%d" % i)
    await client.until(lambda: len(client.got) >= n, timeout=40)
    assert [int(v) for _, _, v in client.got] == list(range(n))
    assert client.exits == []


async def test_a_4_mib_message_crosses_both_ways_intact(peer: Peer, client: Client) -> None:
    body = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB
    client.send(peer.pid, "ping", body)
    client.send(peer.pid, "ping", b"small after big")
    await client.until(lambda: len(client.got) >= 2, timeout=20)
    assert client.got[0][2] == body
    assert client.got[1][2] == b"small after big"


async def test_actors_of_one_os_process_share_one_connection_per_peer(
    peer: Peer, client: Client
) -> None:
    other = Client()
    libproc.spawn(other)
    client.send(peer.pid, "ping", b"1")
    other.send(peer.pid, "ping", b"2")
    await client.until(lambda: len(client.got) == 1)
    await other.until(lambda: len(other.got) == 1)
    rt = current()
    assert rt is not None
    assert list(rt.transport.outbound) == [peer.pid.address]


async def test_exited_fires_when_the_peer_process_is_killed(own_peer: Peer, client: Client) -> None:
    client.link(own_peer.pid)
    client.send(own_peer.pid, "ping", b"hello")
    await client.until(lambda: len(client.got) == 1)
    own_peer.kill()
    await client.until(lambda: len(client.exits) >= 1)
    await asyncio.sleep(0.1)
    assert client.exits == [own_peer.pid]


async def test_raw_socket_sender_reaches_a_libproc_peer_in_another_os_process(
    peer: Peer, client: Client
) -> None:
    """No libproc on the sending side: the echoes prove delivery (to our own `client`)."""
    sender = str(client.pid).encode()
    head = b"POST /echo/ping HTTP/1.1\r\nUser-Agent: libprocess/%s\r\nLibprocess-From: %s\r\n" % (
        sender,
        sender,
    )
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n"
    length = head + b"Content-Length: 6\r\nConnection: Keep-Alive\r\n\r\nlength"
    unknown = chunked.replace(b"/echo/", b"/nobody/")
    reader, writer = await asyncio.open_connection(*peer.pid.address)
    try:
        writer.write(chunked + length + unknown)
        statuses = []
        for _ in range(3):
            line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            statuses.append(int(line.split(b" ")[1]))
    finally:
        writer.close()
    assert statuses == [202, 202, 404]
    await client.until(lambda: len(client.got) >= 2)
    assert [(k, v) for k, _, v in client.got] == [("pong", b"chunk"), ("pong", b"length")]


async def test_garbage_to_a_peer_disturbs_neither_other_connections_nor_the_peer(
    peer: Peer, client: Client
) -> None:
    client.send(peer.pid, "ping", b"before")
    await client.until(lambda: len(client.got) == 1)
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"POST /echo/ping HTTP/1.1\r\nLibpro"):
        _, writer = await asyncio.open_connection(*peer.pid.address)
        writer.write(junk)
        await writer.drain()
        writer.close()
    client.send(peer.pid, "ping", b"after")
    await client.until(lambda: len(client.got) == 2)
    assert [v for _, _, v in client.got] == [b"before", b"after"]


# -- links against raw servers and closed ports ---------------------------------------


async def test_link_to_a_remote_address_nobody_listens_on_gives_exited(client: Client) -> None:
    nobody = UPID("ghost", "127.0.0.1", free_port())
    dropped = metrics.counters.get("libproc/messages_dropped_unconnected", 0)
    client.link(nobody)
    client.send(nobody, "hello", b"lost")
    await client.until(lambda: len(client.exits) >= 1)
    await asyncio.sleep(0.05)
    assert client.exits == [nobody]
    assert metrics.counters.get("libproc/messages_dropped_unconnected", 0) == dropped + 1


class RawServer:
    """An asyncio server that records the bytes of each connection and answers 202s."""

    def __init__(self) -> None:
        self.connections: list[tuple[asyncio.StreamWriter, bytearray, asyncio.Event]] = []
        self.changed = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None
        self.answer = True
        self.close_on_eof = True  # as a libprocess receiver does

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data, eof = bytearray(), asyncio.Event()
        self.connections.append((writer, data, eof))
        self.changed.set()
        while chunk := await reader.read(65536):
            data += chunk
            if self.answer:
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n" * chunk.count(b"POST ")
                )
            self.changed.set()
        eof.set()
        self.changed.set()
        if self.close_on_eof:
            writer.close()

    async def until(self, condition: Any, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        for writer, _, _ in self.connections:
            writer.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_libproc_puts_the_exact_libprocess_bytes_on_the_wire(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    to = UPID("receiver", host, port)
    client.send(to, "cluster.Thing", b"0123456789")
    client.send(to, "empty", b"")
    sender = str(client.pid)
    expected = (
        f"POST /receiver/cluster.Thing HTTP/1.1\r\nUser-Agent: libprocess/{sender}\r\n"
        f"Libprocess-From: {sender}\r\nConnection: Keep-Alive\r\nHost: {host}:{port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"
        f"POST /receiver/empty HTTP/1.1\r\nUser-Agent: libprocess/{sender}\r\n"
        f"Libprocess-From: {sender}\r\nConnection: Keep-Alive\r\nHost: {host}:{port}\r\n\r\n"
    ).encode()
    await raw_server.until(
        lambda: raw_server.connections and len(raw_server.connections[0][1]) >= len(expected)
    )
    assert bytes(raw_server.connections[0][1]) == expected
    assert len(raw_server.connections) == 1


async def test_a_hostname_in_a_upid_is_resolved_and_host_carries_the_numeric_address(
    raw_server: RawServer, client: Client
) -> None:
    port = raw_server.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client.send(UPID("receiver", "localhost", port), "hello", b"")
    await raw_server.until(
        lambda: raw_server.connections and b"\r\n\r\n" in raw_server.connections[0][1]
    )
    head = bytes(raw_server.connections[0][1])
    assert head.startswith(b"POST /receiver/hello HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % port in head


async def test_link_exited_fires_once_when_the_remote_closes_the_connection(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    a, b = UPID("a", host, port), UPID("b", host, port)
    client.link(a)
    client.link(b)
    client.link(a)
    await raw_server.until(lambda: len(raw_server.connections) == 1)
    raw_server.connections[0][0].close()
    await client.until(lambda: len(client.exits) >= 2)
    await asyncio.sleep(0.05)
    assert sorted(client.exits, key=str) == [a, b]


async def test_sending_after_a_broken_link_opens_a_new_connection(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    to = UPID("r", host, port)
    client.link(to)
    await raw_server.until(lambda: len(raw_server.connections) == 1)
    raw_server.connections[0][0].close()
    await client.until(lambda: client.exits == [to])
    client.send(to, "again", b"x")
    await raw_server.until(
        lambda: len(raw_server.connections) == 2 and b"/r/again " in raw_server.connections[1][1]
    )


async def test_relink_replaces_the_connection_without_exited(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    to = UPID("r", host, port)
    client.link(to)
    client.send(to, "one", b"1")
    await raw_server.until(lambda: len(raw_server.connections) == 1)
    client.link(to, relink=True)
    client.send(to, "two", b"2")
    await raw_server.until(lambda: len(raw_server.connections) == 2)
    _, _, old_eof = raw_server.connections[0]
    await asyncio.wait_for(old_eof.wait(), 5)  # the old socket's write side was shut down
    await raw_server.until(lambda: b"/r/two " in raw_server.connections[1][1])
    await asyncio.sleep(0.1)
    assert client.exits == []
    raw_server.connections[1][0].close()  # the new, persistent connection breaks
    await client.until(lambda: len(client.exits) == 1)
    assert client.exits == [to]


async def test_idle_unlinked_connection_is_closed_by_shutting_down_our_write_side(
    raw_server: RawServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "IDLE_CLOSE_SECONDS", 0.0)
    raw_server.close_on_eof = False
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    client.send(UPID("r", host, port), "once", b"x")
    await raw_server.until(lambda: len(raw_server.connections) == 1)
    writer, data, eof = raw_server.connections[0]
    await asyncio.wait_for(eof.wait(), 5)  # the sweeper runs once a second
    assert b"/r/once " in data
    # Our side still reads: the peer can answer after our EOF, then close, with no reset.
    writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()
    rt = current()
    assert rt is not None

    async def gone() -> None:
        while rt.transport.outbound:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(gone(), 5)
    assert client.exits == []


async def test_messages_sent_while_connecting_are_delivered_in_order(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    to = UPID("r", host, port)
    for i in range(50):
        client.send(to, f"m{i}", b"")
    await raw_server.until(
        lambda: raw_server.connections and raw_server.connections[0][1].count(b"POST ") == 50
    )
    data = bytes(raw_server.connections[0][1])
    assert [
        int(line.split(b" ")[1][4:]) for line in data.split(b"\r\n") if line.startswith(b"POST ")
    ] == list(range(50))


async def test_relink_while_connecting_keeps_the_queued_messages(
    raw_server: RawServer, client: Client
) -> None:
    host, port = raw_server.server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    to = UPID("r", host, port)
    client.link(to)
    client.send(to, "first", b"1")  # still connecting: queued
    client.link(to, relink=True)
    client.send(to, "second", b"2")
    await raw_server.until(
        lambda: sum(d.count(b"POST ") for _, d, _ in raw_server.connections) >= 2
    )
    everything = b"".join(bytes(d) for _, d, _ in raw_server.connections)
    assert everything.index(b"/r/first ") < everything.index(b"/r/second ")
    assert client.exits == []


def test_peer_script_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    p = Peer(tmp_path / "peer.log")
    assert p.proc.stdin is not None
    p.proc.stdin.close()
    assert p.proc.wait(10) == 0
    p.stop()
