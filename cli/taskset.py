"""The tasks a command waits for, kept current from fetches and events — pure: no I/O.

Why its own module: `cluster submit --wait --count 5000` must stay cheap to follow. Each
change costs O(1) here (counts by state, the sum of shown progress and the number of
final tasks are kept up to date as tasks change), and the rows of the board are picked
again only when something changed, so drawing the board four times a second does not walk
every task.

Rules (shared by the polling and the event paths):
- A task's JSON replaces the one held unless it is older (`updated_at` smaller) or the one
  held is final: events and fetches may arrive in either order, and the state never goes
  backwards.
- A progress entry (`{"id", "progress", "updated_at"}`) applies to a STAGING or RUNNING
  task, unless it is older than what is held.
- Final means terminal for good: FINISHED, KILLED, or FAILED / LOST with no retry left
  (`attempts > retries`). A FAILED or LOST task with retries left is about to be PENDING
  again (the master re-queues it in the same step), so it is not waited out.
- Values a master sends are not trusted: a progress that is not a number counts as 0,
  a task without our id is ignored.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["TERMINAL", "TaskSet", "is_final", "number", "shown_progress"]

TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED", "LOST"})
ACTIVE = frozenset({"STAGING", "RUNNING"})
_RETRYABLE = frozenset({"FAILED", "LOST"})
# The board's order: running first, then ended badly, then waiting, then finished.
ORDER = {
    "RUNNING": 0,
    "STAGING": 0,
    "FAILED": 1,
    "LOST": 1,
    "KILLED": 1,
    "PENDING": 2,
    "FINISHED": 3,
}


def number(value: Any, default: float = 0.0) -> float:
    """A finite float from whatever a master sent (`default` for anything else)."""
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return result if math.isfinite(result) else default


def _time(value: Any) -> float | None:
    return None if value is None else number(value, default=math.nan)


def is_final(task: dict[str, Any]) -> bool:
    state = task.get("state")
    if state not in TERMINAL:
        return False
    if state in _RETRYABLE:
        return number(task.get("attempts")) > number(task.get("retries"))
    return True


def shown_progress(task: dict[str, Any]) -> float:
    """0..1 as the board shows it: FINISHED is whole; others show what they had done."""
    if task.get("state") == "FINISHED":
        return 1.0
    return max(0.0, min(1.0, number(task.get("progress"))))


class TaskSet:
    """The tasks of `ids`, in that order; see the module for the rules."""

    def __init__(self, ids: list[str], tasks: dict[str, dict[str, Any]]) -> None:
        self.ids = ids
        self.position = {tid: i for i, tid in enumerate(ids)}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.final = 0
        self._progress_sum = 0.0
        self.newly_final: list[str] = []  # ids that became final; the caller empties it
        self._rows: list[str] | None = None
        self._rows_limit = 0
        for tid in ids:
            self._put(tid, tasks[tid])

    # -- views ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every task is final."""
        return self.final == len(self.ids)

    @property
    def total_progress(self) -> float:
        """The board's total: each task's shown progress, averaged."""
        return max(0.0, min(1.0, self._progress_sum / max(len(self.ids), 1)))

    @property
    def ended(self) -> int:
        return sum(n for state, n in self.counts.items() if state in TERMINAL)

    def in_order(self) -> list[dict[str, Any]]:
        return [self.tasks[tid] for tid in self.ids]

    def waiting(self) -> list[str]:
        """Ids not final yet, in submit order."""
        return [tid for tid in self.ids if not is_final(self.tasks[tid])]

    def pending(self) -> list[dict[str, Any]]:
        if not self.counts.get("PENDING"):
            return []
        return [t for t in self.tasks.values() if t.get("state") == "PENDING"]

    def rows(self, limit: int) -> list[str]:
        """The ids to draw: by `ORDER`, in submit order within each group; cached until a
        task changes."""
        if self._rows is None or self._rows_limit != limit:
            key = self._row_key
            self._rows = heapq.nsmallest(limit, self.ids, key=key)
            self._rows_limit = limit
        return self._rows

    def _row_key(self, tid: str) -> tuple[int, int]:
        return ORDER.get(str(self.tasks[tid].get("state")), 2), self.position[tid]

    # -- changes -------------------------------------------------------------------------

    def update(self, task: Any) -> bool:
        """Take a task's JSON (a fetch or a `task` event); True when one of ours changed."""
        if not isinstance(task, dict):
            return False
        tid = str(task.get("id"))
        old = self.tasks.get(tid)
        if old is None or is_final(old) or task == old:
            return False
        new_at, old_at = _time(task.get("updated_at")), _time(old.get("updated_at"))
        if new_at is not None and old_at is not None and new_at < old_at:
            return False
        self._put(tid, task)
        return True

    def update_all(self, tasks: Iterable[Any]) -> bool:
        changed = False
        for task in tasks:
            changed = self.update(task) or changed
        return changed

    def set_progress(self, entry: Any) -> bool:
        """Take one entry of a `progress` event; True when one of ours changed."""
        if not isinstance(entry, dict):
            return False
        tid = str(entry.get("id"))
        old = self.tasks.get(tid)
        if old is None or old.get("state") not in ACTIVE:
            return False
        new_at, old_at = _time(entry.get("updated_at")), _time(old.get("updated_at"))
        if new_at is not None and old_at is not None and new_at < old_at:
            return False
        progress = max(0.0, min(1.0, number(entry.get("progress"))))
        if progress == old.get("progress"):
            return False
        task = {**old, "progress": progress}
        if new_at is not None:
            task["updated_at"] = new_at
        self._put(tid, task)
        return True

    def apply(self, payload: dict[str, Any]) -> bool:
        """One event from `/master/events`; True when one of our tasks changed."""
        kind = payload.get("type")
        if kind == "task":
            return self.update(payload.get("task"))
        if kind == "progress":
            entries = payload.get("tasks")
            if not isinstance(entries, list):
                return False
            changed = False
            for entry in entries:
                changed = self.set_progress(entry) or changed
            return changed
        return False  # slave events and types added later say nothing of our tasks

    def _put(self, tid: str, task: dict[str, Any]) -> None:
        old = self.tasks.get(tid)
        if old is not None:
            state = str(old.get("state"))
            self.counts[state] -= 1
            self._progress_sum -= shown_progress(old)
            self.final -= is_final(old)
        state = str(task.get("state"))
        self.counts[state] = self.counts.get(state, 0) + 1
        self._progress_sum += shown_progress(task)
        if is_final(task):
            self.final += 1
            self.newly_final.append(tid)
        self.tasks[tid] = task
        self._rows = None
