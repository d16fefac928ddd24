"""A peer that accepts a connection but never reads cannot make us buffer without bound."""

from __future__ import annotations

import asyncio
import socket

import pytest

import libproc
from libproc import UPID, Process, transport
from libproc.metrics import metrics


async def test_messages_to_a_peer_that_never_reads_are_dropped_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "MAX_BUFFERED", 1024 * 1024)
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
        before = metrics.counters.get("libproc/messages_dropped_backpressure", 0)
        body = b"x" * 64 * 1024
        rt = libproc.runtime.current()
        assert rt is not None
        for _ in range(400):  # 25 MiB offered
            sender.send(to, "blob", body)
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        dropped = metrics.counters.get("libproc/messages_dropped_backpressure", 0) - before
        assert dropped > 0
        conn = rt.transport.outbound[("127.0.0.1", port)]
        held = conn._queued_bytes + (conn.transport.get_write_buffer_size()
                                     if conn.transport is not None else 0)
        assert held <= transport.MAX_BUFFERED + len(body) + 1024
    finally:
        await libproc.stop()
        server.close()
