"""`cluster logs`: print a task's stdout or stderr, its last lines, or follow it.

The log itself is always read by offset from `GET /master/tasks/<id>/logs` (the master
reads it from the task's slave). What changes with the master's event stream is when it is
read while following: after a read that brought nothing new, the next one waits for an
event about this task (its progress, which is a line on stdout, or a change of state)
instead of asking the slave every half second; with no event it still looks again after a
wait that doubles from `IDLE_FIRST` to `IDLE_MOST` seconds (output without PROGRESS lines
makes no event). A read that filled its chunk is followed at once by the next.

Contract of `print_log`: with `follow` it returns once the log is drained after the task
reached its final state (the slave says so with `X-Log-Eof`, or an event said the task is
final and a read brought nothing more); it raises ClusterError for an unknown task, an
unreachable master or slave, or a task that ended without leaving a log. Without the
event stream (a master older than it, or a stream that ended) it polls every `IDLE_FIRST`
seconds, as before. Ctrl-C (KeyboardInterrupt) ends it at any point.
"""

from __future__ import annotations

import time
from collections import deque
from typing import BinaryIO

from cli.client import ClusterError, MasterClient
from cli.event_feed import Event, EventFeed, Gone, Reset
from cli.taskset import TERMINAL, is_final

__all__ = ["IDLE_FIRST", "IDLE_MOST", "print_log", "print_tail"]

IDLE_FIRST = 0.5  # seconds before looking again at a log that brought nothing
IDLE_MOST = 2.0  # ... growing to this while nothing happens (with the event stream)
CHUNK = 65536  # bytes asked for per read


def print_log(
    client: MasterClient,
    task_id: str,
    stream: str,
    out: BinaryIO,
    *,
    follow: bool = False,
    tail: int | None = None,
    use_events: bool = True,
) -> None:
    """Print the log (see the module); `tail`: only its last lines, then follow."""
    feed: EventFeed | None = None
    if follow and use_events:
        opened = EventFeed.open(client)  # before the first read: no change is missed
        feed = opened if isinstance(opened, EventFeed) else None
    try:
        offset = 0
        if tail is not None:
            offset = print_tail(client, task_id, stream, tail, out)
            if not follow:
                return
        _Follower(client, task_id, stream, out, feed).run(offset, follow)
    finally:
        if feed is not None:
            feed.close()


class _Follower:
    def __init__(
        self,
        client: MasterClient,
        task_id: str,
        stream: str,
        out: BinaryIO,
        feed: EventFeed | None,
    ) -> None:
        self.client, self.task_id, self.stream, self.out = client, task_id, stream, out
        self.feed = feed
        self.final = False  # an event or a look at the task said it is final
        self._looked_at = float("-inf")  # when the task was last looked at after a reset

    def run(self, offset: int, follow: bool) -> None:
        idle = IDLE_FIRST
        while True:
            try:
                chunk = self.client.logs(self.task_id, self.stream, offset, limit=CHUNK)
            except ClusterError as exc:
                if not follow or exc.status != 404:
                    raise
                self._no_log_yet(exc)
                continue
            if chunk.data:
                self.out.write(chunk.data)
                self.out.flush()
            offset = chunk.next_offset
            if chunk.eof:
                return
            if len(chunk.data) >= CHUNK or (chunk.data and not follow):
                continue  # more may be waiting
            if not follow or self.final:
                return  # all there is now; or drained after the task ended
            if chunk.data:
                idle = IDLE_FIRST
            idle = IDLE_FIRST if self._wait(idle) else min(2 * idle, IDLE_MOST)

    def _no_log_yet(self, exc: ClusterError) -> None:
        """A 404 from the log endpoint: the task is not placed yet, or left no log."""
        current = self.client.task(self.task_id)  # an unknown id raises here
        if current.get("state") in TERMINAL and is_final(current):
            raise ClusterError(
                f"task {self.task_id} is {current.get('state')} and left no logs: {exc}"
            ) from None
        self._wait(IDLE_MOST)  # woken early by the task's next change

    def _wait(self, seconds: float) -> bool:
        """Wait up to `seconds` (without events: IDLE_FIRST); True when woken by news of
        this task (its progress or state, or a reset: then the task is looked at, at most
        once a second however many resets come)."""
        if self.feed is None:
            time.sleep(IDLE_FIRST)
            return False
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            items = self.feed.next(left)
            woke = reset = False
            for item in items:
                if isinstance(item, Event):
                    woke = self._about_us(item.payload) or woke
                elif isinstance(item, Reset):
                    reset = True
                elif isinstance(item, Gone):
                    self.feed.close()
                    self.feed = None
                    return True  # read once more, then poll
            if reset and time.monotonic() >= self._looked_at + 1.0:
                self._looked_at = time.monotonic()  # a change may have been missed
                self.final = self.final or is_final(self.client.task(self.task_id))
                woke = True
            if woke:
                return True

    def _about_us(self, payload: dict[str, object]) -> bool:
        kind = payload.get("type")
        if kind == "task":
            task = payload.get("task")
            if isinstance(task, dict) and str(task.get("id")) == self.task_id:
                self.final = self.final or is_final(task)
                return True
        elif kind == "progress":
            entries = payload.get("tasks")
            if isinstance(entries, list):
                return any(
                    isinstance(e, dict) and str(e.get("id")) == self.task_id for e in entries
                )
        return False


def print_tail(
    client: MasterClient, task_id: str, stream: str, lines: int, out: BinaryIO
) -> int:
    """Print the last `lines` lines of what the log holds now; the offset to follow from.

    The master's log API reads forward from an offset, so the log is read through once,
    keeping only the last lines (memory bounded by them, not by the log)."""
    kept: deque[bytes] = deque(maxlen=lines + 1)
    offset, partial = 0, b""
    while True:
        chunk = client.logs(task_id, stream, offset, limit=1 << 20)
        offset = chunk.next_offset
        if chunk.data:
            parts = (partial + chunk.data).split(b"\n")
            partial = parts.pop()
            kept.extend(p + b"\n" for p in parts)
        if chunk.eof or not chunk.data:
            break
    if partial:
        kept.append(partial)
    text = b"".join(list(kept)[-lines:]) if lines else b""
    out.write(text)
    out.flush()
    return offset
