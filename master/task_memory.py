"""What of the task history the master keeps in memory, and what it leaves to the database.

`TaskMemory(master)` is part of the master actor (its methods run in the master's mailbox).
Contract (see also master/process.py's docstring):

- Every task that has not ended stays in `master.tasks`; of the ended ones, the newest
  `max_completed_tasks` stay, and older ones leave at the heartbeat (`heartbeat`) once their
  last save has committed (`has_unsaved`): the database answers for them from then on.
- Tasks the retention deleted from the database (`deleted`) leave memory and the counts.
- The listing's positions (master/task_positions.py) start from a snapshot taken on the
  store's writer thread after every write queued before it (`load_positions`); retention
  waits until that snapshot has answered, so no deletion is counted twice.
- After bursts of tasks left memory the heap is trimmed (master/memory.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import libproc
from master import task_queries
from master.memory import Trimmer

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["TaskMemory"]

log = logging.getLogger("master")

_Snapshot = tuple[dict[tuple[str, int, str], int], int]


class TaskMemory:
    """The bounded task memory of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.trimmer = Trimmer(interval=5.0)
        self.positions_settled = False  # retention waits for it

    def heartbeat(self, now: float) -> None:
        """Once a second: old ended tasks leave memory, the heap trims, retention runs."""
        self.trim_ended()
        self.trimmer.maybe(time.monotonic())
        if self.positions_settled:
            self.master.gc.maybe_start(now)

    def trim_ended(self) -> None:
        """Drop from memory the ended tasks past the newest `max_completed_tasks`, once their
        last save has committed (the database then answers for them)."""
        m = self.master
        for tid in m._index.ended_beyond(m.config.max_completed_tasks):
            if self.has_unsaved(tid):
                continue
            rec = m.tasks.get(tid)
            if rec is None or rec.is_terminal:
                m.tasks.pop(tid, None)
                m._index.forget(tid)
                self.trimmer.left(1)

    def has_unsaved(self, tid: str) -> bool:
        """Whether the task's latest state may not be in the database yet."""
        m = self.master
        return tid in m._last_save or tid in m._dirty or m.http.tasks.killing(tid)

    def deleted(self, states: dict[str, str]) -> None:
        """Tasks the retention deleted from the database ({id: state}): out of memory and
        out of the counts."""
        m = self.master
        for tid in states:
            rec = m.tasks.get(tid)
            if rec is not None and rec.is_terminal:
                del m.tasks[tid]
                m._index.forget(tid)
        m._index.uncount(states)

    def load_positions(self) -> None:
        """Start the snapshot behind `TaskIndex.positions`: on the writer thread, after every
        write queued so far, so replaying what changes meanwhile makes it exact."""
        m = self.master
        m._index.positions.begin()
        loading = m.store.read(task_queries.block_counts, in_order=True)

        def loaded(f: asyncio.Future[_Snapshot]) -> None:
            libproc.dispatch(m.pid, self._positions_loaded, f)

        loading.add_done_callback(loaded)

    def _positions_loaded(self, f: asyncio.Future[_Snapshot]) -> None:
        self.positions_settled = True
        positions = self.master._index.positions
        if f.cancelled() or f.exception() is not None:
            positions.fail()
            log.warning("listing positions not loaded (pages walk the index instead): %s",
                        "cancelled" if f.cancelled() else f.exception())
            return
        snapshot, last_id = f.result()
        positions.load(snapshot, last_id)
