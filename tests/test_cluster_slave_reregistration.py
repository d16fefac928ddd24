"""The real slave actor re-registering with a fake master, on the paused Clock (in-process).

The slave promises "registration is retried with capped exponential backoff". These tests
record when its (Re)RegisterSlaveMessages arrive and check the gaps never shrink.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock
from signed_peers import SignedMaster
from slave.process import Slave, SlaveConfig
from waiting import until


class FakeMaster(SignedMaster):
    """Process id `master`; records registration attempts; answers the `answer_at`-th one."""

    def __init__(self, answer_at: int | None = None) -> None:
        super().__init__()
        self.attempts: list[float] = []
        self.answer_at = answer_at

    def _register(self, sender: UPID, msg: Any) -> None:
        self._attempt(sender, msg, super()._register)

    def _reregister(self, sender: UPID, msg: Any) -> None:
        self._attempt(sender, msg, super()._reregister)

    def _attempt(self, sender: UPID, msg: Any, answer: Any) -> None:
        self.attempts.append(Clock.now())
        if self.answer_at is not None and len(self.attempts) == self.answer_at:
            answer(sender, msg)


@pytest.fixture
async def runtime() -> AsyncIterator[None]:
    await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    try:
        yield
    finally:
        await libproc.stop()
        Clock.reset()


async def advance(seconds: float, step: float = 0.05) -> None:
    for _ in range(round(seconds / step)):
        Clock.advance(step)
        await Clock.settle()
        await asyncio.sleep(0)


async def test_reregistration_backoff_never_shrinks_after_a_quick_master_loss(
        runtime: None, tmp_path: Path) -> None:
    first = FakeMaster(answer_at=5)  # answers the attempt at t=3.75 (backoff then 4 s)
    libproc.spawn(first)
    slave = Slave(SlaveConfig(master=first.pid, work_dir=tmp_path / "work",
                              progress_interval=1.0, update_retry=1.0))
    libproc.spawn(slave)
    await until(lambda: len(first.attempts) == 1)
    for _ in range(200):  # attempts at ~0, 0.25, 0.75, 1.75, 3.75
        if len(first.attempts) == 5:
            break
        await advance(0.05)
    await until(lambda: slave.mode == "registered")
    assert len(first.attempts) == 5
    # The master goes away at once (its old retry timer, due at t=7.75, is still armed).
    libproc.terminate(first)
    await until(lambda: slave.mode == "registering")
    second = FakeMaster()  # never answers: we only watch the retries
    libproc.spawn(second)
    await advance(16.0)
    times = second.attempts
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
    assert len(gaps) >= 3, times
    print("attempts after the loss, relative:", [round(t - times[0], 2) for t in times])
    assert gaps == sorted(gaps), f"attempts at {times}: gaps {gaps} shrink"
