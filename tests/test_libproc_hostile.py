"""Thousands of idle or half-sent connections from one address do not stop a peer serving
everyone else (the connection limits themselves: test_libproc_connections.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from libproc import UPID
from test_libproc_remote import Client, Peer, client  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "peer.log")
    try:
        yield p
    finally:
        p.stop()


def _metrics(pid: UPID) -> dict[str, float]:
    url = f"http://{pid.host}:{pid.port}/metrics/snapshot"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def test_thousands_of_idle_and_truncated_connections_do_not_block_others(
    peer: Peer, client: Client
) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(2000):  # from a second address: past 1,000 (its limit) it is refused
            s = socket.create_connection((peer.pid.host, peer.pid.port), timeout=10,
                                         source_address=("127.0.0.2", 0))
            idle.append(s)
            try:
                if i % 10 == 0:  # a request cut off in the middle of its head
                    s.sendall(b"POST /echo/ping HTTP/1.1\r\nLibprocess-From: x@127.0.0.1:1\r\n")
                elif i % 10 == 1:  # a chunked body that promises more than it sends
                    s.sendall(b"POST /echo/ping HTTP/1.1\r\nLibprocess-From: x@127.0.0.1:1\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\nffff\r\nabc")
            except OSError:  # refused (503 and closed) before we wrote
                pass
        # Everyone else is still served: messages both ways and HTTP.
        for n in range(20):
            client.send(peer.pid, "ping", str(n).encode())
        await client.until(lambda: sum(k == "pong" for k, _, _ in client.got) == 20)
        bodies = [int(v) for k, _, v in client.got if k == "pong"]
        assert bodies == list(range(20))
        snapshot = await asyncio.to_thread(_metrics, peer.pid)
        assert snapshot["libproc/connections_inbound_busiest_address"] == 1000
        assert snapshot["libproc/connections_refused_per_address"] == 1000
        assert snapshot["libproc/connections_inbound"] >= 1001
    finally:
        for s in idle:
            s.close()
    assert peer.proc.poll() is None  # still alive after they all went away
    client.send(peer.pid, "ping", b"after")
    await client.until(lambda: any(v == b"after" for k, _, v in client.got if k == "pong"))

