"""Retention: the master deletes tasks that ended longer ago than `--task-retention`.

Off by default (`MasterConfig.task_retention` None keeps every task). When set, the
heartbeat starts a pass every `gc_interval` seconds (`maybe_start`). A pass runs outside the
master's mailbox, in chunks of `CHUNK` tasks: it reads the ids of tasks that ended before
the cutoff (`Store.read`, off the writer thread), asks the master which of them it still
holds unended or unsaved (a task re-queued since keeps its row), deletes the rest in one
write batch each (`Store.write`: status updates and submits interleave with the chunks, so
nothing waits for a large deletion), and tells the master what went (`TaskMemory.deleted`:
out of memory and out of the counts). A pass that meets a database fault stops; the next
one starts over. Visible in `/master/vars` as `gc_*`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

import libproc
from master import task_queries
from master.store import StoreError

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["CHUNK", "TaskGC"]

log = logging.getLogger("master")

CHUNK = 1000


class TaskGC:
    """The retention passes of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._task: asyncio.Task[int] | None = None
        self._next = 0.0
        self.passes = 0
        self.deleted = 0
        self.failures = 0
        self.last_pass_at = 0.0
        self.last_pass_deleted = 0

    def stats(self) -> dict[str, int | float]:
        retention = self.master.config.task_retention
        return {"task_retention_secs": -1 if retention is None else retention,
                "running": int(self._task is not None and not self._task.done()),
                "passes": self.passes, "tasks_deleted": self.deleted,
                "failures": self.failures, "last_pass_at": self.last_pass_at,
                "last_pass_deleted": self.last_pass_deleted}

    def maybe_start(self, now: float) -> None:
        """In the mailbox (the heartbeat): start a pass when one is due and none runs."""
        retention = self.master.config.task_retention
        if retention is None or now < self._next or (
                self._task is not None and not self._task.done()):
            return
        self._next = now + self.master.config.gc_interval
        self._task = asyncio.get_running_loop().create_task(self.run(now - retention))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self, cutoff: float) -> int:
        """One pass: delete every task that ended before `cutoff`; how many were deleted."""
        m = self.master
        total = 0
        try:
            while True:
                ids = await m.store.read(functools.partial(
                    task_queries.expired_ids, cutoff=cutoff, limit=CHUNK))
                if not ids:
                    break
                keep: set[str] = await libproc.dispatch(m.pid, self._held, ids)
                doomed = [i for i in ids if i not in keep]
                if doomed:
                    gone: dict[str, str] = await m.store.write(functools.partial(
                        task_queries.delete_ended, ids=doomed, cutoff=cutoff))
                    await libproc.dispatch(m.pid, m.memory.deleted, gone)
                    total += len(gone)
                    self.deleted += len(gone)
                if len(ids) < CHUNK or not doomed:
                    break
        except (StoreError, libproc.LibprocError) as exc:
            self.failures += 1
            log.warning("task retention pass stopped after %d deletions: %s", total, exc)
        self.passes += 1
        self.last_pass_at = libproc.Clock.now()
        self.last_pass_deleted = total
        if total:
            log.info("task retention: deleted %d task(s) that ended before %.0f", total, cutoff)
        return total

    def _held(self, ids: list[str]) -> set[str]:
        """In the mailbox: those of `ids` the master must keep (not ended in memory, or a
        save still on its way)."""
        m = self.master
        held = set()
        for tid in ids:
            rec = m.tasks.get(tid)
            if (rec is not None and not rec.is_terminal) or m.memory.has_unsaved(tid):
                held.add(tid)
        return held
