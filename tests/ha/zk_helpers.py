"""Test-side helpers around a real ZooKeeper: contenders to watch, a client, forced expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kazoo.client import KazooClient

from ha_servers import ZooKeeperServer
from master.election import LeaderContender
from protos.leader_info import LeaderInfo
from protos.zookeeper import ZooKeeperWorker


def info(ident: int) -> LeaderInfo:
    """A master's info with made-up but well-formed addresses (nothing listens there)."""
    return LeaderInfo(f"master@127.0.0.1:{5000 + ident}", f"http://127.0.0.1:{5000 + ident}",
                      id=str(ident))


def leaders(contenders: list[LeaderContender]) -> list[LeaderContender]:
    return [c for c in contenders if c.leading]


async def eventually(cond: Callable[[], object], timeout: float, what: str,
                     show: Callable[[], object] | None = None) -> None:
    """Poll cond (every 10 ms, on the loop) until true; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            extra = f"; state: {show()!r}" if show is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g} s{extra}")
        await asyncio.sleep(0.01)


async def sole_leader(contenders: list[LeaderContender], timeout: float) -> LeaderContender:
    """Wait until exactly one of contenders leads and return it."""
    await eventually(lambda: len(leaders(contenders)) == 1, timeout, "exactly one leader",
                     lambda: [(c.info.id, c.leading, c.member) for c in contenders])
    return leaders(contenders)[0]


def client(hosts: str) -> KazooClient:
    """A plain kazoo client for the test to look at and tamper with the znodes."""
    zk = KazooClient(hosts=hosts, timeout=10.0)
    zk.start(timeout=30)
    return zk


def expire_session(hosts: str, worker: ZooKeeperWorker) -> None:
    """Make ZooKeeper end a contender's or detector's session, as on expiry: a second client
    takes the session over (same id and password) and closes it; its ephemeral znodes go at
    once, and the worker's client learns on reconnecting that its session expired."""
    session = worker._client.client_id
    assert session is not None, f"{worker.name} is not connected"
    thief = KazooClient(hosts=hosts, client_id=session, timeout=10.0)
    thief.start(timeout=30)
    thief.stop()
    thief.close()


def lose(server: ZooKeeperServer, how: str) -> None:
    """Take ZooKeeper away: a clean `stop`, a `kill` -9, or `freeze` (SIGSTOP: sockets stay
    open and nothing answers, as when the network to it is cut)."""
    {"stop": server.stop, "kill": server.kill, "freeze": server.freeze}[how]()


def restore(server: ZooKeeperServer, how: str) -> None:
    """Bring it back after `lose(server, how)`: the same port and data."""
    server.thaw() if how == "freeze" else server.start()
