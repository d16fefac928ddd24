"""The standby master's actor (master/standby.py) on real sockets: every request redirected
to the leader with its path and query, 503 while no leader can serve, and what it tells
senders of slave messages — bounded, whoever they claim to be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

import libproc
from libproc import ProtobufProcess
from master.standby import MAX_HINTS_PER_SECOND, Standby
from protos import cluster_pb2 as pb
from protos.leader_info import LeaderInfo
from signed_peers import forge
from waiting import until

LEADER = LeaderInfo("master@127.0.0.9:7070", "http://127.0.0.9:7070", id="L", version="0.1.0")


@dataclass
class Setup:
    standby: Standby
    base: str
    leader: list[LeaderInfo | None] = field(default_factory=lambda: [LEADER])


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """A standby as `cluster master --zk` runs it: process `master`, the delegate."""
    runtime = await libproc.start(host="127.0.0.1", port=0, delegate="master")
    try:
        own = LeaderInfo(str(runtime.with_id("master")), f"http://127.0.0.1:{runtime.port}")
        holder: list[LeaderInfo | None] = [LEADER]
        standby = Standby(own, lambda: holder[0], lambda: {"role": "standby", "leader": "x"},
                          lambda: "claiming the database's leader epoch")
        libproc.spawn(standby)
        yield Setup(standby, f"http://127.0.0.1:{runtime.port}", holder)
    finally:
        await libproc.stop()


async def _ask(base: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, base + path, allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers, await resp.json(content_type=None)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/master/tasks?state=RUNNING&limit=5&name=a%20b"),
    ("POST", "/master/tasks"), ("POST", "/master/tasks/7/kill"), ("GET", "/vars"),
    ("GET", "/"), ("DELETE", "/master/anything/at/all?x=1")])
async def test_every_request_is_redirected_to_the_same_url_on_the_leader(
        setup: Setup, method: str, path: str) -> None:
    status, headers, body = await _ask(setup.base, method, path, data=b'{"command": "x"}')
    assert status == 307
    assert headers["Location"] == "http://127.0.0.9:7070" + path
    assert body["leader"]["pid"] == LEADER.pid and "standby" in body["error"]


async def test_master_state_is_answered_by_the_standby_itself(setup: Setup) -> None:
    status, _, body = await _ask(setup.base, "GET", "/master/state")
    assert (status, body) == (200, {"role": "standby", "leader": "x"})


async def test_no_leader_known_is_503_with_retry_after(setup: Setup) -> None:
    setup.leader[0] = None
    status, headers, body = await _ask(setup.base, "POST", "/master/tasks", json={})
    assert status == 503 and headers["Retry-After"] == "1"
    assert body["leader"] is None and "no master leads" in body["error"]


async def test_named_leader_itself_but_not_serving_yet_is_503_never_a_redirect_loop(
        setup: Setup) -> None:
    setup.leader[0] = setup.standby.own
    status, headers, body = await _ask(setup.base, "GET", "/master/tasks")
    assert status == 503 and "Location" not in headers
    assert "claiming the database" in body["error"]


class Recorder(ProtobufProcess):
    """Plays the slaves a standby's hints go to."""

    def __init__(self) -> None:
        super().__init__("slave(1)")
        self.hints: list[pb.NotLeaderMessage] = []

    def initialize(self) -> None:
        self.install(pb.NotLeaderMessage, lambda _sender, msg: self.hints.append(msg))


async def test_slave_messages_get_one_hint_a_second_per_sender_and_nothing_else(
        setup: Setup) -> None:
    recorder = Recorder()
    libproc.spawn(recorder)
    target = setup.standby.pid
    statuses = await forge(target, pb.RegisterSlaveMessage(
        resources=pb.Resources(cpus=1, mem=64), nonce=b"n" * 16), recorder.pid, copies=50)
    assert statuses == [b"HTTP/1.1 202 Accepted"] * 50
    await until(lambda: recorder.hints, timeout=10)
    await asyncio.sleep(0.3)
    assert len(recorder.hints) == 1
    assert recorder.hints[0].leader == LEADER.pid and "standby" in recorder.hints[0].reason
    assert setup.standby.hints_suppressed == 49
    await asyncio.sleep(1.0)  # a second later the same sender is told again
    await forge(target, pb.StatusUpdateMessage(), recorder.pid, body=b"\xff garbage")
    await until(lambda: len(recorder.hints) == 2, timeout=10)


async def test_a_flood_of_forged_senders_gets_a_bounded_trickle_of_hints(setup: Setup) -> None:
    target = setup.standby.pid
    # 300 different senders (nothing listens at their ports) within well under a second.
    for batch in range(3):
        await asyncio.gather(*(forge(target, pb.PongSlaveMessage(),
                                     f"slave({i})@127.0.0.1:{40000 + batch * 100 + i}")
                               for i in range(100)))
    sent, suppressed = setup.standby.hints_sent, setup.standby.hints_suppressed
    assert sent + suppressed == 300
    assert sent <= 2 * MAX_HINTS_PER_SECOND  # the burst may straddle one second's edge
