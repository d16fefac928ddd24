"""Outgoing buffering: a peer that stops reading costs bounded memory; a healthy one never
loses a message, however big the burst."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import libproc
from libproc import UPID, Process, transport
from libproc.metrics import metrics
from test_libproc_remote import Peer


def _dropped() -> int:
    return metrics.counters.get("libproc/messages_dropped_backpressure", 0)


async def test_messages_to_a_peer_that_never_reads_are_dropped_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "MAX_BUFFERED", 1024 * 1024)
    monkeypatch.setattr(transport, "STALL_SECONDS", 0.3)
    # A listener whose accepted sockets are never read: the kernel buffers fill, then ours.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    await libproc.start(host="127.0.0.1", port=0)
    try:
        sender = Process("sender")
        libproc.spawn(sender)
        to = UPID("sink", "127.0.0.1", port)
        before = _dropped()
        body = b"x" * 64 * 1024
        rt = libproc.runtime.current()
        assert rt is not None
        for _ in range(200):  # 12.5 MiB, faster than the stall grace: all held, none dropped
            sender.send(to, "blob", body)
            await asyncio.sleep(0)
        assert _dropped() == before
        await asyncio.sleep(0.5)  # the peer has now taken nothing for longer than the grace
        for _ in range(200):
            sender.send(to, "blob", body)
            await asyncio.sleep(0)
        assert _dropped() - before == 200
        conn = rt.transport.outbound[("127.0.0.1", port)]
        assert conn.transport is not None
        held = conn._queued_bytes + conn.transport.get_write_buffer_size()
        assert held <= 200 * (len(body) + 1024)  # only the first burst is held
    finally:
        await libproc.stop()
        server.close()


class Counter(Process):
    def __init__(self) -> None:
        super().__init__("counter")
        self.sizes: list[int] = []

    def initialize(self) -> None:
        self.install("pong", lambda sender, body: self.sizes.append(len(body)))


async def test_a_burst_bigger_than_the_cap_reaches_a_healthy_peer_whole(
    monkeypatch: pytest.MonkeyPatch, runtime: UPID, tmp_path: Path,
) -> None:
    # Like C++ libprocess, a burst sent in one go is buffered whole for a peer that reads:
    # 16 MiB in one turn to a peer in another OS process, 16 times the cap.
    monkeypatch.setattr(transport, "MAX_BUFFERED", 1024 * 1024)
    peer = Peer(tmp_path / "peer.log")
    try:
        counter = Counter()
        libproc.spawn(counter)
        before = _dropped()
        for i in range(64):
            counter.send(peer.pid, "ping", bytes([i]) * 256 * 1024)
        deadline = asyncio.get_running_loop().time() + 30
        while len(counter.sizes) < 64 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert _dropped() == before
        assert counter.sizes == [256 * 1024] * 64
    finally:
        peer.stop()
