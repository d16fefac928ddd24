"""Indexes over the master's tasks, so no hot path scans every task ever submitted.

The master keeps in memory every task that has not ended and the most recently ended ones
(up to `MasterConfig.max_completed_tasks`); the database holds them all. Scheduling,
heartbeats and re-registration only care about the few tasks that are PENDING or active,
and `/master/vars` about how many tasks are in each state, so each would grow with the
cluster's history if it scanned the tasks: these indexes keep them flat.

``counts`` is the number of tasks in each state, database-only ones included: set from the
database at start (`load_counts`), then kept by ``note`` (a task that changed state moves
from its old count to its new one), ``forget`` (an ended task leaves memory but stays
counted) and ``uncount`` (tasks deleted from the database). ``ended_beyond(n)`` names the
oldest-ended tasks past the newest ``n``, for the master to drop from memory.

Both indexes are *lazy*: ``note()`` adds a task when it enters PENDING or an active state,
and a task that has since left is dropped the next time the index is read. That keeps the
bookkeeping to one call (the master makes it wherever it persists a task, which it does
after every state change) and cannot go wrong if a state changes twice between reads.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from bisect import insort
from collections import OrderedDict
from collections.abc import Mapping

from master.task_positions import Positions
from master.tasks import ACTIVE_STATES, PENDING, STATES, TERMINAL_STATES, TaskRecord


def task_key(task_id: str) -> tuple[int, str]:
    """Sort key for task ids: numeric ids in numeric order, any others after them."""
    return (int(task_id), "") if task_id.isdigit() else (1 << 62, task_id)


class TaskIndex:
    """The PENDING queue in scheduling order and the set of active (launched) tasks."""

    def __init__(self) -> None:
        # (submitted_at, id key..., id), kept sorted: a re-queued task keeps its
        # submission time, so it goes back ahead of tasks submitted after it.
        self._queue: list[tuple[float, int, str, str]] = []
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self.counts: dict[str, int] = {s: 0 for s in STATES}
        self._state: dict[str, str] = {}  # the state each task in memory is counted in
        self._ended: OrderedDict[str, None] = OrderedDict()  # ended in memory, oldest first
        #: How many tasks entered each terminal state since start (for /metrics).
        self.endings: dict[str, int] = {s: 0 for s in STATES if s in TERMINAL_STATES}
        #: Where each position of a listing starts (moved as ``counts`` are).
        self.positions = Positions()

    def load_counts(self, counts: Mapping[str, int]) -> None:
        """Start from the database's counts; then ``adopt`` the tasks loaded from it."""
        self.counts = {s: int(counts.get(s, 0)) for s in STATES}

    def adopt(self, rec: TaskRecord) -> None:
        """A task loaded from the database, already in ``counts``."""
        self._state[rec.id] = rec.state
        self.note(rec)

    def note(self, rec: TaskRecord) -> None:
        """Record that ``rec`` may have changed state (or is new)."""
        old = self._state.get(rec.id)
        if old != rec.state:
            if old is not None:
                self.counts[old] -= 1
            self.counts[rec.state] = self.counts.get(rec.state, 0) + 1
            self._state[rec.id] = rec.state
            self.positions.move(rec.id, old, rec.state)
            if rec.state in self.endings:
                self.endings[rec.state] += 1
        if rec.state in TERMINAL_STATES:
            self._ended[rec.id] = None
            self._ended.move_to_end(rec.id)
        elif old in TERMINAL_STATES:
            self._ended.pop(rec.id, None)  # re-queued
        if rec.state == PENDING:
            if rec.id not in self._queued:
                self._queued.add(rec.id)
                insort(self._queue, (rec.submitted_at or 0.0, *task_key(rec.id), rec.id))
        elif rec.state in ACTIVE_STATES:
            self._active.add(rec.id)

    def pending(self, tasks: Mapping[str, TaskRecord]) -> list[TaskRecord]:
        """PENDING tasks, oldest submission first; forgets those that left PENDING."""
        out: list[TaskRecord] = []
        keep: list[tuple[float, int, str, str]] = []
        for entry in self._queue:
            rec = tasks.get(entry[3])
            if rec is not None and rec.state == PENDING:
                out.append(rec)
                keep.append(entry)
            else:
                self._queued.discard(entry[3])
        if len(keep) != len(self._queue):
            self._queue = keep
        return out

    def active(self, tasks: Mapping[str, TaskRecord]) -> list[TaskRecord]:
        """STAGING and RUNNING tasks, in id order; forgets those that ended."""
        out = []
        for tid in list(self._active):
            rec = tasks.get(tid)
            if rec is not None and rec.state in ACTIVE_STATES:
                out.append(rec)
            else:
                self._active.discard(tid)
        out.sort(key=lambda r: task_key(r.id))
        return out

    def ended_beyond(self, keep: int) -> list[str]:
        """The oldest-ended tasks in memory past the ``keep`` most recent, oldest first."""
        excess = len(self._ended) - keep
        if excess <= 0:
            return []
        out: list[str] = []
        for tid in self._ended:
            if len(out) >= excess:
                break
            out.append(tid)
        return out

    def forget(self, tid: str) -> None:
        """An ended task leaves memory (the database keeps it, and so do ``counts``)."""
        self._ended.pop(tid, None)
        self._state.pop(tid, None)

    def uncount(self, deleted: Mapping[str, str]) -> None:
        """Tasks deleted from the database ({id: its state}); call ``forget`` first for
        those in memory."""
        for tid, state in deleted.items():
            self.counts[state] = max(0, self.counts.get(state, 0) - 1)
            self.positions.move(tid, state, None)

    @property
    def ended_in_memory(self) -> int:
        return len(self._ended)

    def __len__(self) -> int:
        """How many entries are held (stale ones included): for /vars and tests."""
        return len(self._queue) + len(self._active)
