"""Clock: time as libproc sees it, and timers that tests can pause and advance.

Everything time-based in libproc (`delay`, `Future.after`, `libproc.sleep`) goes through this
clock, so a test can `Clock.pause()`, `Clock.advance(30)` and have 30 seconds of timers fire
instantly, in deadline order, then `await Clock.settle()` to let the processes they woke finish
their work. Like libprocess's clock.hpp, time only moves forward; `resume()` keeps whatever
time was advanced. A cancelled timer may already have fired: `Timer.cancel()` says which.

A paused clock still fires the timers that are already due (`delay(0, ...)`, or a timer for
the paused instant) on the next turn of the event loop, and `settle()` waits for them and for
the work they start, as libprocess's `Clock::settle()` does. Unlike libprocess, which keeps a
paused time per process, there is one paused time for every process.

The clock knows nothing of processes: the runtime registers, with `set_idle_check`, how
`settle()` asks whether every process is idle (libproc.runtime does it in `start()`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "Timer", "set_idle_check"]

# Whether every process is idle, as settle() must wait for it; None: no runtime, nothing to
# wait for. Registered by the runtime (set_idle_check), so the clock imports no runtime.
_idle_check: Callable[[], bool] | None = None


def set_idle_check(check: Callable[[], bool] | None) -> None:
    """Tell `Clock.settle()` how to ask whether every process is idle (no queued event, no
    handler running); the runtime registers its own on start and None on stop."""
    global _idle_check
    _idle_check = check


class Timer:
    """A pending call at a deadline on the libproc clock."""

    __slots__ = ("deadline", "_thunk", "_handle", "_done", "_seq")

    def __init__(self, deadline: float, thunk: Callable[[], Any], seq: int) -> None:
        self.deadline = deadline
        self._thunk: Callable[[], Any] | None = thunk
        self._handle: asyncio.TimerHandle | None = None
        self._done = False
        self._seq = seq

    def cancel(self) -> bool:
        """Cancel; True if the timer had not fired yet (so it never will)."""
        if self._done:
            return False
        self._done = True
        self._thunk = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        Clock._discard(self)
        return True

    @property
    def fired_or_cancelled(self) -> bool:
        return self._done

    def _fire(self) -> None:
        if self._done:
            return
        self._done = True
        self._handle = None
        thunk, self._thunk = self._thunk, None
        Clock._discard(self)
        if thunk is not None:
            try:
                thunk()
            except Exception:  # a timer callback must not break the clock
                import logging

                logging.getLogger("libproc.clock").exception("timer callback raised")

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self._seq) < (other.deadline, other._seq)


class Clock:
    """Process-wide clock (class-level, as in libprocess). Not thread-safe: use it on the loop."""

    _paused = False
    _paused_now = 0.0
    _offset = 0.0
    _heap: list[Timer] = []
    _live: set[Timer] = set()
    _seq = itertools.count()
    # The loop on which a call of _tick() is scheduled (to fire a paused clock's due timers).
    _tick_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def now(cls) -> float:
        """Seconds since the epoch, as libproc's clock says."""
        if cls._paused:
            return cls._paused_now
        return time.time() + cls._offset

    @classmethod
    def paused(cls) -> bool:
        return cls._paused

    @classmethod
    def timer(cls, seconds: float, thunk: Callable[[], Any]) -> Timer:
        """Call `thunk()` after `seconds` of clock time (on the event loop's thread)."""
        seconds = max(0.0, float(seconds))
        t = Timer(cls.now() + seconds, thunk, next(cls._seq))
        cls._live.add(t)
        if cls._paused:
            heapq.heappush(cls._heap, t)
            if t.deadline <= cls._paused_now:
                cls._schedule_tick()
        else:
            t._handle = asyncio.get_running_loop().call_later(seconds, t._fire)
        return t

    @classmethod
    def _schedule_tick(cls) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the next advance() fires it
            return
        if cls._tick_loop is loop:  # already on its way (one left on a closed loop is not)
            return
        cls._tick_loop = loop
        loop.call_soon(cls._tick)

    @classmethod
    def _tick(cls) -> None:
        """Fire the timers due at the paused instant (those due now, not ones they add)."""
        cls._tick_loop = None
        if not cls._paused:
            return
        due: list[Timer] = []
        while cls._heap and cls._heap[0].deadline <= cls._paused_now:
            due.append(heapq.heappop(cls._heap))
        for t in due:
            t._fire()

    @classmethod
    def _due(cls) -> bool:
        """True while a paused clock has a timer that is due (a tick is then on its way)."""
        if not cls._paused:
            return False
        heap = cls._heap
        while heap and heap[0]._done:
            heapq.heappop(heap)
        if heap and heap[0].deadline <= cls._paused_now:
            cls._schedule_tick()
            return True
        return False

    @classmethod
    def pause(cls) -> None:
        """Freeze time; timers now fire only through `advance()`."""
        if cls._paused:
            return
        cls._paused_now = cls.now()
        cls._paused = True
        cls._heap = []
        for t in cls._live:
            if t._handle is not None:
                t._handle.cancel()
                t._handle = None
            heapq.heappush(cls._heap, t)
        if cls._heap and cls._heap[0].deadline <= cls._paused_now:
            cls._schedule_tick()  # already due in real time: fires as it would have

    @classmethod
    def advance(cls, seconds: float) -> None:
        """Move paused time forward, firing every timer that falls due, in deadline order."""
        if not cls._paused:
            raise RuntimeError("Clock.advance() needs a paused clock: call Clock.pause() first")
        target = cls._paused_now + max(0.0, float(seconds))
        while cls._heap and cls._heap[0].deadline <= target:
            t = heapq.heappop(cls._heap)
            if t._done:
                continue
            cls._paused_now = max(cls._paused_now, t.deadline)
            t._fire()
        cls._paused_now = target

    @classmethod
    def resume(cls) -> None:
        """Let time flow again, from the (possibly advanced) paused time."""
        if not cls._paused:
            return
        cls._offset = cls._paused_now - time.time()
        cls._paused = False
        heap, cls._heap = cls._heap, []
        loop: asyncio.AbstractEventLoop | None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for t in heap:
            if t._done:
                continue
            if loop is None:
                cls._live.discard(t)
                t._done = True
                continue
            t._handle = loop.call_later(max(0.0, t.deadline - cls.now()), t._fire)

    @classmethod
    async def settle(cls, max_rounds: int = 10_000) -> None:
        """Wait until every libproc process is idle (no queued events, no handler running)
        and, with a paused clock, no timer is due: those fire, and what they start is done.
        Gives up quietly after `max_rounds` turns of the event loop."""
        for _ in range(max_rounds):
            await asyncio.sleep(0)
            if cls._settled():
                # One more round: callbacks scheduled with call_soon may enqueue new events.
                await asyncio.sleep(0)
                if cls._settled():
                    return

    @classmethod
    def _settled(cls) -> bool:
        idle = _idle_check
        return (idle is None or idle()) and not cls._due()

    @classmethod
    def reset(cls) -> None:
        """Resume and drop every timer: for test fixtures between tests."""
        for t in list(cls._live):
            t.cancel()
        cls._paused = False
        cls._offset = 0.0
        cls._heap = []
        cls._live = set()
        cls._tick_loop = None

    @classmethod
    def _discard(cls, t: Timer) -> None:
        cls._live.discard(t)


async def sleep(seconds: float) -> None:
    """`asyncio.sleep` on the libproc clock (instant under `Clock.pause()` + `advance()`)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = Clock.timer(seconds, wake)
    try:
        await waiter
    finally:
        timer.cancel()
