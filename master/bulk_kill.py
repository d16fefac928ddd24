"""`POST /master/tasks/kill`: kill many tasks at once, by ids or by a state/name filter.

Contract (issue 15): the body is ``{"ids": [...]}`` or ``{"state": [...], "name": "PREFIX"}``
(validated by `master.api.parse_bulk_kill`) and the answer ``{"killed": n}``: how many tasks
the kill reached. Only tasks that have not ended can be killed, and every one of those is in
the master's memory, so the selection never reads the database: ids that are unknown or
already ended are not counted. A task on a live slave is sent a kill (its status update
settles it, as for a single kill); every other one — PENDING, or launched on a slave that
is gone — ends KILLED at once, all of them in one write batch. The answer waits for that
commit; if it fails, those tasks are put back exactly as they were and the answer is 503
(the kills already sent to slaves stay sent). Runs in the master's mailbox except the wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any, cast

import libproc
from master import task_queries
from master.api import ApiError, BulkKill
from master.tasks import TaskRecord
from protos import cluster_pb2 as pb

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["bulk_kill"]

log = logging.getLogger("master")


async def bulk_kill(master: Master, what: BulkKill) -> int:
    """Kill the tasks `what` names; how many it reached. Raises ApiError(503) when the
    kills that the database decides could not be committed (nothing of them changed)."""
    reached, saved = await libproc.dispatch(master.pid, _kill, master, what)
    if saved is not None:
        failure = await asyncio.shield(saved)
        if failure is not None:
            raise ApiError(f"could not persist the kill of {reached[1]} task(s), so they are "
                           f"as they were ({reached[0]} kill(s) sent to slaves stand); retry "
                           f"once the database is back: {failure}", 503)
    return sum(reached)


def _selected(m: Master, what: BulkKill) -> list[TaskRecord]:
    if what.ids is not None:
        found = (m.tasks.get(tid) for tid in what.ids)
        return [r for r in found if r is not None and not r.is_terminal]
    live = m._index.pending(m.tasks) + m._index.active(m.tasks)
    return [r for r in live if (what.states is None or r.state in what.states)
            and (what.name is None or r.name.startswith(what.name))]


def _kill(m: Master, what: BulkKill) -> tuple[tuple[int, int], asyncio.Future[str | None] | None]:
    """In the mailbox: ((sent to slaves, ended here), the commit's outcome or None)."""
    now = libproc.Clock.now()
    sent, ended, before, held = 0, [], [], []
    for rec in _selected(m, what):
        if m.http.tasks.killing(rec.id):
            continue
        slave = m.slaves.get(rec.slave_id or "")
        alive = slave is not None and slave.state in ("active", "disconnected")
        if rec.state != "PENDING" and slave is not None and alive:
            m._send_kill(slave, pb.TaskID(value=rec.id))
            sent += 1
            continue
        before.append(dataclasses.replace(rec))
        held.append(slave is not None and rec.id in slave.tasks)
        m._release(rec)
        rec.transition("KILLED", now, message="killed by user before it started"
                       if rec.state == "PENDING" else "killed by user; its slave was gone")
        m._index.note(rec)
        m.events.publish_task(rec.to_json())
        ended.append(rec)
    if not ended:
        return (sent, 0), None
    saving = m.store.write(functools.partial(task_queries.save_records,
                                             rows=[r.to_json() for r in ended]))
    for rec in ended:
        m._last_save[rec.id] = cast("asyncio.Future[None]", saving)
    outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    saving.add_done_callback(lambda f: libproc.dispatch(
        m.pid, _saved, m, ended, before, held, f, outcome))
    if sent or len(ended) > 1:
        log.info("bulk kill: %d task(s) KILLED, %d kill(s) sent to slaves", len(ended), sent)
    return (sent, len(ended)), outcome


def _saved(m: Master, ended: list[TaskRecord], before: list[TaskRecord], held: list[bool],
           saving: asyncio.Future[Any], outcome: asyncio.Future[str | None]) -> None:
    """In the mailbox: the batch ended; keep the kills, or put every task back."""
    exc = None if not saving.cancelled() and saving.exception() is None else (
        "the save was cancelled" if saving.cancelled() else str(saving.exception()))
    for rec, old, was_held in zip(ended, before, held):
        if m._last_save.get(rec.id) is saving:
            del m._last_save[rec.id]
        if exc is None:
            continue
        for f in dataclasses.fields(TaskRecord):
            setattr(rec, f.name, getattr(old, f.name))
        m._index.note(rec)
        m.events.publish_task(rec.to_json())
        slave = m.slaves.get(rec.slave_id or "")
        if was_held and slave is not None:
            m._claim(slave, rec)
    if exc is not None:
        log.warning("bulk kill of %d task(s) not persisted, tasks left as they were: %s",
                    len(ended), exc)
        m._schedule()
    if not outcome.done():
        outcome.set_result(exc)
