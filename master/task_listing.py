"""Reading tasks for the HTTP API: the paged listing and single tasks, memory then database.

`GET /master/tasks?limit=N&offset=M&state=S1,S2&name=PREFIX&order=asc|desc` (contract)
answers ``{"tasks": [...], "total": T, "next": URL-or-null}``: tasks in id order (``asc``,
the default, oldest first), ``limit`` 1,000 by default and at most 10,000, ``total`` the
exact number of matches, ``next`` the path of the following page while there is one.

The database orders and filters (master/task_queries.py, on indexes, in a read transaction
off the writer thread); a task the master holds in memory is shown as the master knows it,
which may be a moment ahead of its row. Without a name filter ``total`` comes from the
master's counts by state (kept as tasks change); with one it is counted in the same read
transaction as the page (on the name index or, when the states asked for hold few tasks,
on the state index), or, when few tasks lack the name, from those counts less them; a name
every task has is no filter at all. Everything here runs outside the mailbox and reads the
master's state through `dispatch`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

import libproc
from master import task_queries
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
        in_states, seek = await libproc.dispatch(m.pid, self._locate, q)
        found, records = await m.store.read(functools.partial(
            _read_page, q=q, in_states=in_states, seek=seek))
        shown: list[dict[str, Any]] = await libproc.dispatch(m.pid, self._overlay, q, records)
        more = q.offset + q.limit < found and q.limit > 0
        return {"tasks": shown, "total": found,
                "next": f"/master/tasks?{q.query_string(q.offset + q.limit)}" if more else None}

    def _locate(self, q: PageQuery) -> tuple[int, tuple[Block, int] | None]:
        """In the mailbox: how many tasks are in the states asked for, and where the page
        starts among them, name aside (None: unknown, let the database walk)."""
        index = self.master._index
        states = [s for s in STATES if q.states is None or s in q.states]
        total = sum(index.counts[s] for s in states)
        if q.offset >= total or q.limit == 0:
            return total, None
        return total, index.positions.locate(states, task_queries.window_start(q, total))

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
               seek: tuple[Block, int] | None) -> tuple[int, list[TaskRecord]]:
    """In the store's read transaction: page ``q``, given the master's count of the tasks
    in its states and where the page starts among them. A name filter is counted and found
    in the database; when few tasks in those states lack the name, it is counted as those
    states' tasks less these, and when none does (a prefix they all share), it is answered
    as no filter, from the master's counts."""
    if q.name is not None:
        outside = task_queries.count_outside(session, q.states, q.name)
        if outside != 0:
            total = None if outside is None else max(0, in_states - outside)
            return task_queries.page(session, q, total=total, in_states=in_states)
        q = dataclasses.replace(q, name=None)
    return task_queries.page(session, q, total=in_states, seek=seek)
