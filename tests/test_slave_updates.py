"""The slave re-sends unacknowledged status updates with backoff, on the paused Clock.

The master acknowledges an update only once it is stored, which under load takes more than
a second; a slave that re-sent every unacknowledged update every second would double the
master's work just when it is busiest (it did: ~0.5 duplicates per update in the cluster
benchmark). Each update is re-sent `update_retry` after it was last sent, then at doubling
intervals up to `max_backoff`, until acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock
from protos import cluster_pb2 as pb
from signed_peers import SignedMaster
from slave.process import Slave, SlaveConfig
from waiting import until


class SilentMaster(SignedMaster):
    """Registers the slave, records every status update, acknowledges only when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[float, pb.StatusUpdate]] = []

    def on_message(self, sender: UPID, msg: Any) -> None:
        if isinstance(msg, pb.StatusUpdateMessage):
            self.received.append((Clock.now(), msg.update))

    def launch(self, task_id: str, command: str) -> None:
        self.signed(pb.LaunchTasksMessage(id=1, tasks=[pb.TaskInfo(
            name=task_id, task_id=pb.TaskID(value=task_id), command=command, attempt=1)]))

    def ack_all(self) -> None:
        for _, u in self.received:
            self.signed(pb.StatusUpdateAcknowledgementMessage(
                slave_id=u.slave_id, task_id=u.task_id, uuid=u.uuid))

    def times(self, state: int) -> list[float]:
        return [t for t, u in self.received if u.state == state]


async def advance(seconds: float, step: float = 0.05) -> None:
    for _ in range(round(seconds / step)):
        Clock.advance(step)
        await Clock.settle()
        await asyncio.sleep(0)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SilentMaster, Slave]]:
    await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    master = SilentMaster()
    libproc.spawn(master)
    slave = Slave(SlaveConfig(master=master.pid, work_dir=tmp_path / "work",
                              update_retry=1.0, max_backoff=4.0, master_timeout=1e6))
    libproc.spawn(slave)
    try:
        await until(lambda: slave.mode == "registered")
        yield master, slave
    finally:
        await libproc.stop()
        Clock.reset()


async def test_unacknowledged_update_is_resent_with_backoff_until_acknowledged(
        pair: tuple[SilentMaster, Slave]) -> None:
    master, slave = pair
    master.launch("t1", "true")
    await until(lambda: master.times(pb.FINISHED))
    await advance(24.0)
    running = master.times(pb.RUNNING)
    gaps = [round(b - a, 2) for a, b in zip(running, running[1:])]
    # Due 1 s after the first send, then 2 s, 4 s, 4 s...; the sweep runs once a second.
    assert 6 <= len(running) <= 9, running
    assert gaps == sorted(gaps) and gaps[0] >= 1.0 and max(gaps) <= 5.0 + 1e-6, gaps
    assert len(master.times(pb.FINISHED)) <= 9
    assert slave._counters["status_updates_sent"] == len(master.received)
    master.ack_all()
    await until(lambda: not slave.unacked)
    sent = len(master.received)
    await advance(10.0)
    assert len(master.received) == sent  # acknowledged: never again
    assert slave._resend_at == {}


async def test_acknowledged_in_time_is_never_resent(pair: tuple[SilentMaster, Slave]) -> None:
    master, slave = pair
    master.launch("t1", "true")
    await until(lambda: master.times(pb.FINISHED))
    await advance(0.5)
    master.ack_all()
    await until(lambda: not slave.unacked)
    await advance(10.0)
    assert [u.state for _, u in master.received] == [pb.RUNNING, pb.FINISHED]
