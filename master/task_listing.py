"""Reading tasks for the HTTP API: the paged listing and single tasks, memory then database.

`GET /master/tasks?limit=N&offset=M&state=S1,S2&name=PREFIX&order=asc|desc` (contract)
answers ``{"tasks": [...], "total": T, "next": URL-or-null}``: tasks in id order (``asc``,
the default, oldest first), ``limit`` 1,000 by default and at most 10,000, ``total`` the
exact number of matches, ``next`` the path of the following page while there is one.

The database orders and filters (master/task_queries.py and, for a name filter on SQLite,
master/task_blocks.py; on indexes, in a read transaction off the writer thread); a task the
master holds in memory is shown as the master knows it, which may be a moment ahead of its
row. Without a name filter ``total`` comes from the master's counts by state (kept as tasks
change); with one it is counted in the same read transaction as the page (block by block,
on the name index or, when the states asked for hold few tasks, on the state index), or,
when few tasks lack the name, from those counts less them; a name every task has is no
filter at all. Everything here runs outside the mailbox and reads the master's state
through `dispatch`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

import libproc
from master import task_blocks, task_queries
from master.api import PageQuery
from master.task_positions import Block
from master.tasks import STATES, TaskRecord

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["TaskListing"]


class TaskListing:
    """Pages and single tasks of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    async def page(self, q: PageQuery) -> dict[str, Any]:
        """The listing's answer. Raises StoreError when the database cannot be read."""
        m = self.master
        in_states, seek, counts = await libproc.dispatch(m.pid, self._locate, q)
        found, records = await m.store.read(functools.partial(
            _read_page, q=q, in_states=in_states, seek=seek, counts=counts))
        shown: list[dict[str, Any]] = await libproc.dispatch(m.pid, self._overlay, q, records)
        more = q.offset + q.limit < found and q.limit > 0
        return {"tasks": shown, "total": found,
                "next": f"/master/tasks?{q.query_string(q.offset + q.limit)}" if more else None}

    def _locate(self, q: PageQuery
                ) -> tuple[int, tuple[Block, int] | None, task_blocks.BlockCounts | None]:
        """In the mailbox: how many tasks are in the states asked for, where the page
        starts among them, name aside (None: unknown, let the database walk), and, for a
        name filter, the counts by block behind it (None: unknown)."""
        index = self.master._index
        states = [s for s in STATES if q.states is None or s in q.states]
        total = sum(index.counts[s] for s in states)
        if q.offset >= total or q.limit == 0:
            return total, None, None
        found = index.positions.by_block(states) if q.name is not None else None
        counts = None if found is None else task_blocks.BlockCounts(*found)
        return (total, index.positions.locate(states, task_queries.window_start(q, total)),
                counts)

    def _overlay(self, q: PageQuery, records: list[TaskRecord]) -> list[dict[str, Any]]:
        """In the mailbox: each row as the master knows it now; a task that has just left
        the filter's states, or that does not have the name asked for (one submitted while
        a name every task had was answered as no filter), is left out."""
        out = []
        for row in records:
            rec = self.master.tasks.get(row.id, row)
            if ((q.states is None or rec.state in q.states)
                    and (q.name is None or rec.name.startswith(q.name))):
                out.append(rec.to_json())
        return out

    async def find(self, tid: str) -> TaskRecord | None:
        """A task as the master knows it (a copy), else as the database has it, else None.
        Raises StoreError when the database is needed and cannot be read."""
        m = self.master
        rec: TaskRecord | None = await libproc.dispatch(m.pid, self._copy, tid)
        if rec is None:
            rec = await m.store.read(functools.partial(task_queries.get, task_id=tid))
        return rec

    def _copy(self, tid: str) -> TaskRecord | None:
        rec = self.master.tasks.get(tid)
        return None if rec is None else dataclasses.replace(rec)


def _read_page(session: Session, q: PageQuery, in_states: int,
               seek: tuple[Block, int] | None, counts: task_blocks.BlockCounts | None
               ) -> tuple[int, list[TaskRecord]]:
    """In the store's read transaction: page ``q``, given the master's count of the tasks
    in its states, where the page starts among them and, for a name, its count of them in
    each block of ids. A name every task in those states has (a prefix they all share) is
    no filter. Otherwise, with the blocks (SQLite): when few tasks lack the name, each
    block's matches are its tasks less those (task_blocks.complement_page); a page found
    by a short walk from its end (edge_ids) is counted on the name index; else the matches
    are counted block by block (block_page).
    Without them (PostgreSQL, or before the master has its counts), a name is counted on
    its index, or as those states' tasks less the few that lack it, and found by a walk."""
    if q.name is None:
        return task_queries.page(session, q, total=in_states, seek=seek)
    outside = task_queries.count_outside(session, q.states, q.name)
    if outside == 0:
        return task_queries.page(session, dataclasses.replace(q, name=None),
                                 total=in_states, seek=seek)
    if (counts is not None and session.get_bind().dialect.name == "sqlite"
            and not task_queries.few_in_states(q.states, in_states)):
        if outside is not None:
            return task_blocks.complement_page(session, q, q.name, counts)
        ids = task_queries.edge_ids(session, q)
        if ids is not None:  # near its end: count on the name index, read those rows
            found = task_queries.count_matching(session, q.states, q.name, in_states)
            return found, task_queries.records(session, ids)
        return task_blocks.block_page(session, q, q.name, counts)
    total = None if outside is None else max(0, in_states - outside)
    return task_queries.page(session, q, total=total, in_states=in_states)
