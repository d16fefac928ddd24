"""A batch of the store's queued requests: what a request is, how a batch becomes the SQL of
one transaction, and how its callers' futures are settled.

The writer thread (``store_writer``) decides which requests share a transaction and what to
do when one fails; this module only says what each request does inside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from master import store_schema as schema
from master import store_tasks as tasks
from master.store_faults import (
    StoreUnavailable,
    db_message,
    is_database_fault,
    is_disconnect,
    is_transient,
)
from master.tasks import TaskRecord

log = logging.getLogger("master.store")

Work = Callable[[Session], Any]


@dataclass
class Op:
    """A queued request: writes are batched (saves deduplicated), ``solo`` ones run alone."""

    work: Work | None = None
    save: dict[str, Any] | None = None
    attempts: Sequence[dict[str, Any]] = ()  # attempt rows saved with `save`
    # (n, sequence, make): allocate n numbers; with make, insert make(numbers) as new tasks
    numbers: tuple[int, str, Callable[[list[int]], list[TaskRecord]] | None] | None = None
    solo: bool = False
    # solo only: does ``work`` write? Then the SQLite file is checked as for a batch (solo
    # requests are never fenced: they are reads, the schema, and the claim itself)
    writes: bool = False
    # solo only: called on the writer thread with the result, once it is committed
    committed: Callable[[Any], None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    afut: asyncio.Future[Any] | None = None
    cfut: concurrent.futures.Future[Any] | None = None

    def new_task_ids(self, result: Any) -> list[str]:
        """The ids of the tasks this request created, given its result."""
        if self.numbers is None or self.numbers[2] is None or not result:
            return []
        return [r.id for r in result]


class Fault(StoreUnavailable):
    """A batch failed for ``reason``; ``committed`` holds what ``apply`` returned if its
    commit may have happened (it went where no master will look, or nobody knows)."""

    def __init__(self, reason: str, committed: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.committed = committed


def unavailable_cause(exc: BaseException) -> bool:
    """Did the database fail (rather than one request's data)?"""
    return (isinstance(exc, Fault) or is_transient(exc) or is_disconnect(exc)
            or is_database_fault(exc))


def apply(session: Session, ops: list[Op], progress: dict[str, tuple[float, float]]
          ) -> tuple[list[Any], int]:
    """Run ``ops`` and ``progress`` in the session's transaction: (result per op, rows).

    Numbers are taken with one increment per sequence for the whole batch, in place (so two
    stores on one database never get the same), then handed out in request order.
    """
    wanted: dict[str, int] = {}
    for op in ops:
        if op.numbers is not None:
            wanted[op.numbers[1]] = wanted.get(op.numbers[1], 0) + op.numbers[0]
    following = {sequence: schema.allocate(session, sequence, total) - total + 1
                 for sequence, total in wanted.items() if total}
    results: list[Any] = []
    saves: dict[str, dict[str, Any]] = {}
    attempts: dict[tuple[str, int], dict[str, Any]] = {}
    new: list[dict[str, Any]] = []
    for op in ops:
        result: Any = None
        if op.save is not None:
            saves[op.save["id"]] = op.save
            for row in op.attempts:
                attempts[(row["task_id"], row["number"])] = row
        elif op.numbers is not None:
            n, sequence, make = op.numbers
            first = following.get(sequence, 1)
            following[sequence] = first + n
            result = list(range(first, first + n))
            if make is not None:
                result = make(result)
                new += [r.to_json() for r in result]
        elif op.work is not None:
            result = op.work(session)
        results.append(result)
    tasks.insert_new(session, new)
    rows = len(new) + tasks.upsert(session, list(saves.values()))
    if attempts:
        rows += tasks.upsert_attempts(session, list(attempts.values()))
    if progress:
        try:
            # A savepoint: progress is best effort and must never sink the batch's saves.
            with session.begin_nested():
                rows += tasks.update_progress(session, progress)
        except Exception as exc:  # noqa: BLE001
            if unavailable_cause(exc):
                raise
            log.error("dropped %d progress values: %s", len(progress), db_message(exc))
    return results, rows


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if not fut.done():  # done = the caller cancelled it
            fut.set_exception(exc) if exc is not None else fut.set_result(value)


def resolve(ops: list[Op], results: list[Any], exc: BaseException | None) -> None:
    """Settle each op's future; one ``call_soon_threadsafe`` per loop, not per future."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for i, op in enumerate(ops):
        value = results[i] if exc is None else None
        if op.cfut is not None:
            op.cfut.set_exception(exc) if exc is not None else op.cfut.set_result(value)
        elif op.loop is not None and op.afut is not None:
            by_loop.setdefault(op.loop, []).append((op.afut, value, exc))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
