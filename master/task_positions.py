"""Where the M-th task of a listing starts, so a page at any offset is a short index walk.

A database finds the row at OFFSET M by walking M index entries (SQLite, PostgreSQL):
50 ms and more in the middle of a million. So the master keeps, in memory, how many tasks
of each state fall in each *block* of ids: ids of the same length that share all but their
last three characters, e.g. 123000–123999 (ids are numbers as text, listed in
``(length(id), id)`` order, in which every block is one contiguous run). To find position M
among the states asked for, it adds block counts until M falls inside a block; the page is
then read from that block's first id, skipping fewer than a block's worth (≤ 1,000 entries
for numbers). 1,000,000 tasks take about 1,000 blocks per state.

Exact, not estimated: the counts start from one snapshot taken on the store's writer thread
(`begin` when it is queued, `load` when it answers: what changed in between is replayed on
top, and tasks created before the snapshot but noted after it are not counted twice), and
every state change moves a task from one count to another (`move`). Until loaded (and for
a database that could not give the snapshot) `locate` answers None and listings walk.
Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping

__all__ = ["Block", "Positions", "block_of"]

Block = tuple[int, str]  # (length of the ids, their common prefix)


def block_of(task_id: str) -> Block:
    """The block of an id: its length and all but its last three characters."""
    return len(task_id), task_id[:-3] if len(task_id) > 3 else ""


def _number(task_id: str) -> int | None:
    return int(task_id) if task_id.isdigit() and len(task_id) < 19 else None


class Positions:
    """Per state, how many tasks each block of ids holds (see the module docstring)."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[Block, int]] | None = None
        self._blocks: list[Block] = []  # every block seen, in listing order
        self._known: set[Block] = set()
        self._place: dict[Block, int] | None = None  # where each block is in _blocks
        # While the snapshot is on its way: (id, old state, new state), in order.
        self._replay: list[tuple[str, str | None, str | None]] | None = None

    @property
    def ready(self) -> bool:
        return self._counts is not None

    def begin(self) -> None:
        """The snapshot was just queued: record every change from now on."""
        self._replay = []

    def load(self, snapshot: Mapping[tuple[str, int, str], int], last_id: int) -> None:
        """The snapshot ({(state, length, prefix): n}) and the last id allocated when it
        was taken; the changes recorded since `begin` are applied on top."""
        self._counts = {}
        for (state, length, prefix), n in snapshot.items():
            self._add(state, (int(length), str(prefix)), int(n))
        replay, self._replay = self._replay or [], None
        for tid, old, new in replay:
            number = _number(tid)
            if old is None and number is not None and number <= last_id:
                continue  # created before the snapshot, so already in it
            self.move(tid, old, new)

    def fail(self) -> None:
        """No snapshot: stay unready (listings walk)."""
        self._replay = None

    def move(self, tid: str, old: str | None, new: str | None) -> None:
        """A task went from state `old` to `new` (None: it did not exist / it was deleted)."""
        if self._replay is not None:
            self._replay.append((tid, old, new))
            return
        if self._counts is None:
            return
        block = block_of(tid)
        if old is not None:
            self._add(old, block, -1)
        if new is not None:
            self._add(new, block, 1)

    def _add(self, state: str, block: Block, n: int) -> None:
        assert self._counts is not None
        by_block = self._counts.setdefault(state, {})
        by_block[block] = max(0, by_block.get(block, 0) + n)
        if block not in self._known:
            self._known.add(block)
            insort(self._blocks, block)
            self._place = None

    def by_block(self, states: Iterable[str]
                 ) -> tuple[list[Block], list[int], list[int]] | None:
        """Every block that has held a task since the snapshot, in listing order (a
        superset of the blocks the database holds), how many tasks in ``states`` each
        holds now, and how many tasks in any state; None when unknown."""
        if self._counts is None:
            return None
        if self._place is None:
            self._place = {b: i for i, b in enumerate(self._blocks)}
        place, wanted = self._place, set(states)
        counts, every = [0] * len(self._blocks), [0] * len(self._blocks)
        for state, table in self._counts.items():
            chosen = state in wanted
            for block, n in table.items():
                i = place[block]
                every[i] += n
                if chosen:
                    counts[i] += n
        return list(self._blocks), counts, every

    def locate(self, states: Iterable[str], position: int) -> tuple[Block, int] | None:
        """The block holding the `position`-th (from 0) task in `states`, in listing order,
        and how many of those tasks come before it inside the block; None when unknown."""
        if self._counts is None:
            return None
        tables = [self._counts[s] for s in states if s in self._counts]
        seen = 0
        for block in self._blocks:
            n = sum(t.get(block, 0) for t in tables)
            if seen + n > position:
                return block, position - seen
            seen += n
        return None
