"""The garbage collector's queue: ended sandboxes by when they ended, oldest first (pure).

A sandbox is named by its directory's name (`<escaped task id>@<attempt>`). Its latest end
counts: a sandbox that ends again (an attempt re-run) is due `delay` after that end, and its
earlier entry is skipped. Both of the collector's orders are this one: those due under
`--gc-delay` are the oldest, and a disk over its watermark is relieved oldest first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

__all__ = ["GcQueue"]


class GcQueue:
    """Ended sandboxes awaiting collection. No I/O; use from one thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []  # (ended_at, name); stale entries skipped
        self._ended: dict[str, float] = {}  # name -> its latest end

    def __len__(self) -> int:
        return len(self._ended)

    def __contains__(self, name: object) -> bool:
        return name in self._ended

    def push(self, name: str, ended_at: float) -> None:
        """`name` ended at `ended_at` (a later end replaces an earlier one)."""
        self._ended[name] = ended_at
        heapq.heappush(self._heap, (ended_at, name))

    @classmethod
    def of(cls, entries: Iterable[tuple[float, str]]) -> GcQueue:
        """A queue of `(ended_at, name)` entries (the sandboxes found on disk), for a worker
        thread to build while the loop goes on: one push at a time, since one C call over
        all of them (heapify, sort) would hold the GIL, and so the loop, for its whole run."""
        queue = cls()
        for ended_at, name in entries:
            queue.push(name, ended_at)
        return queue

    def merge(self, newer: GcQueue) -> None:
        """Take every end pushed to `newer` (since this one's entries were read from disk:
        they win); O(k log n) for its k entries."""
        for name, ended_at in newer._ended.items():
            self.push(name, ended_at)

    def discard(self, name: str) -> None:
        """Forget `name` (its heap entry is skipped when it comes up)."""
        self._ended.pop(name, None)

    def _clean_top(self, budget: int) -> int:
        """Pop stale entries off the top, at most `budget`; what is left of the budget."""
        heap = self._heap
        while heap and budget > 0 and self._ended.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
            budget -= 1
        return budget

    def oldest(self) -> float | None:
        """When the oldest queued sandbox ended; None when none is queued."""
        self._clean_top(len(self._heap))
        return self._heap[0][0] if self._heap else None

    def take(self, *, due_by: float, everything: bool, limit: int,
             skip: Callable[[str], bool]) -> list[tuple[str, float]]:
        """Remove and return up to `limit` sandboxes, oldest first, as `(name, ended_at)`:
        those that ended at or before `due_by`, or (`everything`) any. A sandbox for which
        `skip(name)` holds (in use again) is dropped from the queue, not returned: its next
        end queues it again. Pops at most 4 x `limit` heap entries in all (bounded work)."""
        out: list[tuple[str, float]] = []
        heap, budget = self._heap, 4 * limit
        while heap and len(out) < limit and budget > 0:
            ended_at, name = heap[0]
            if self._ended.get(name) != ended_at:  # stale: ended again since
                heapq.heappop(heap)
                budget -= 1
                continue
            if not everything and ended_at > due_by:
                break
            heapq.heappop(heap)
            budget -= 1
            del self._ended[name]
            if not skip(name):
                out.append((name, ended_at))
        return out
