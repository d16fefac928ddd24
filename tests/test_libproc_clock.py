"""Clock: pause/advance/resume/settle and the timers built on it. No real sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import libproc
from libproc import Clock, Process


@pytest.fixture(autouse=True)
def _clock() -> Any:
    Clock.reset()
    yield
    Clock.reset()


async def test_paused_clock_stands_still_until_advanced() -> None:
    Clock.pause()
    assert Clock.paused()
    start = Clock.now()
    await asyncio.sleep(0.01)
    assert Clock.now() == start
    Clock.advance(30)
    assert Clock.now() == pytest.approx(start + 30)


async def test_timer_fires_only_once_its_deadline_is_reached() -> None:
    Clock.pause()
    fired: list[str] = []
    Clock.timer(5, lambda: fired.append("t"))
    Clock.advance(4.999)
    assert fired == []
    Clock.advance(0.001)
    assert fired == ["t"]
    Clock.advance(100)
    assert fired == ["t"]


async def test_timers_fire_in_deadline_order_and_see_their_deadline_as_now() -> None:
    Clock.pause()
    start = Clock.now()
    seen: list[tuple[str, float]] = []
    for name, seconds in (("c", 3), ("a", 1), ("b", 2), ("a2", 1)):
        Clock.timer(seconds, lambda n=name: seen.append((n, Clock.now() - start)))
    Clock.advance(10)
    assert [n for n, _ in seen] == ["a", "a2", "b", "c"]
    assert [round(t, 6) for _, t in seen] == [1, 1, 2, 3]


async def test_cancel_before_firing_prevents_the_call() -> None:
    Clock.pause()
    fired: list[int] = []
    timer = Clock.timer(1, lambda: fired.append(1))
    assert timer.cancel() is True
    Clock.advance(2)
    assert fired == []


async def test_cancel_after_firing_returns_false() -> None:
    Clock.pause()
    timer = Clock.timer(1, lambda: None)
    Clock.advance(1)
    assert timer.fired_or_cancelled
    assert timer.cancel() is False


async def test_a_raising_timer_does_not_stop_later_timers() -> None:
    Clock.pause()
    fired: list[int] = []

    def bad() -> None:
        raise RuntimeError("timer bug")

    Clock.timer(1, bad)
    Clock.timer(2, lambda: fired.append(2))
    Clock.advance(3)
    assert fired == [2]


async def test_advance_without_pause_is_refused() -> None:
    with pytest.raises(RuntimeError, match="pause"):
        Clock.advance(1)


async def test_pause_takes_over_timers_started_in_real_time() -> None:
    fired: list[int] = []
    Clock.timer(3600, lambda: fired.append(1))
    Clock.pause()
    Clock.advance(3599)
    assert fired == []
    Clock.advance(1)
    assert fired == [1]


async def test_resume_keeps_advanced_time_and_reschedules_timers() -> None:
    Clock.pause()
    fired = asyncio.Event()
    Clock.timer(100, fired.set)
    Clock.advance(100 - 1e-4)  # 0.1 ms left
    Clock.resume()
    assert not Clock.paused()
    assert Clock.now() > time.time() + 99  # the advanced time is kept
    await asyncio.wait_for(fired.wait(), 2)


async def test_reset_drops_timers_and_unpauses() -> None:
    Clock.pause()
    fired: list[int] = []
    Clock.timer(1, lambda: fired.append(1))
    Clock.reset()
    assert not Clock.paused()
    Clock.pause()
    Clock.advance(5)
    assert fired == []


async def test_libproc_sleep_returns_after_clock_advance() -> None:
    Clock.pause()
    task = asyncio.ensure_future(libproc.sleep(60))
    await asyncio.sleep(0)
    assert not task.done()
    Clock.advance(60)
    await asyncio.wait_for(task, 2)
    assert task.done() and task.exception() is None


async def test_cancelled_libproc_sleep_leaves_no_timer() -> None:
    Clock.pause()
    task = asyncio.ensure_future(libproc.sleep(60))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Clock._live == set()


# -- delay ----------------------------------------------------------------------------


class Recorder(Process):
    def __init__(self) -> None:
        super().__init__(prefix="recorder")
        self.calls: list[Any] = []

    def record(self, value: Any) -> Any:
        self.calls.append(value)
        return value


async def test_delay_fires_after_clock_advance(runtime: libproc.UPID) -> None:
    Clock.pause()
    proc = Recorder()
    pid = libproc.spawn(proc)
    libproc.delay(10, pid, Recorder.record, "late")
    libproc.delay(5, pid, "record", "early")
    await Clock.settle()
    Clock.advance(7)
    await Clock.settle()
    assert proc.calls == ["early"]
    Clock.advance(3)
    await Clock.settle()
    assert proc.calls == ["early", "late"]


async def test_cancelled_delay_never_dispatches(runtime: libproc.UPID) -> None:
    Clock.pause()
    proc = Recorder()
    pid = libproc.spawn(proc)
    timer = libproc.delay(1, pid, Recorder.record, "x")
    assert timer.cancel() is True
    Clock.advance(2)
    await Clock.settle()
    assert proc.calls == []


async def test_delay_to_a_terminated_process_is_dropped(runtime: libproc.UPID) -> None:
    Clock.pause()
    proc = Recorder()
    pid = libproc.spawn(proc)
    libproc.delay(1, pid, Recorder.record, "x")
    libproc.terminate(pid)
    assert await asyncio.wait_for(_aw(libproc.wait(pid)), 5) is True
    Clock.advance(2)  # fires a dispatch to a dead process: a FAILED future, no exception
    await Clock.settle()
    assert proc.calls == []


async def test_settle_waits_for_chains_of_events(runtime: libproc.UPID) -> None:
    class Chain(Process):
        def __init__(self) -> None:
            super().__init__(prefix="chain")
            self.n = 0

        def step(self) -> None:
            self.n += 1
            if self.n < 50:
                libproc.dispatch(self.pid, Chain.step)

    proc = Chain()
    libproc.spawn(proc)
    libproc.dispatch(proc.pid, Chain.step)
    await Clock.settle()
    assert proc.n == 50


async def _aw(f: libproc.Future[Any]) -> Any:
    return await f


async def test_a_delayed_call_that_raises_is_logged_not_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await libproc.start(host="127.0.0.1", port=0)
    try:
        Clock.pause()

        class Boom(libproc.Process):
            def explode(self) -> None:
                raise RuntimeError("kaboom")

        p = Boom()
        libproc.spawn(p)
        libproc.delay(1.0, p.pid, Boom.explode)
        with caplog.at_level("ERROR", logger="libproc.delay"):
            Clock.advance(1.0)
            await Clock.settle()
        assert any("kaboom" in r.getMessage() for r in caplog.records)
    finally:
        await libproc.stop()
        Clock.reset()


def test_the_clock_imports_nothing_of_libproc() -> None:
    """STYLE.md: the clock knows nothing of the runtime; the runtime registers a hook."""
    import ast
    from pathlib import Path

    source = Path(libproc.__file__).parent / "clock.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("libproc"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("libproc") for a in node.names)


async def test_settle_waits_for_the_registered_idle_check() -> None:
    from libproc import clock

    answers = [False, False, False, True]
    asked: list[bool] = []

    def idle() -> bool:
        asked.append(answers[len(asked)] if len(asked) < len(answers) else True)
        return asked[-1]

    clock.set_idle_check(idle)
    try:
        await Clock.settle()
    finally:
        clock.set_idle_check(None)
    assert asked[:4] == [False, False, False, True]


async def test_the_runtime_registers_its_idle_check_while_it_runs() -> None:
    from libproc import clock

    assert clock._idle_check is None
    await libproc.start(host="127.0.0.1", port=0)
    try:
        assert clock._idle_check is not None and clock._idle_check()
    finally:
        await libproc.stop()
    assert clock._idle_check is None
