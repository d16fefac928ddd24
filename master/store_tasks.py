"""The store's queries on the ``tasks`` table: every one the writer thread runs on tasks.

Each function takes an open ``Session`` inside the caller's transaction and commits nothing.
Portable across SQLite and PostgreSQL (upserts through ``store_schema.upsert_statement``). New
task queries (listing, counting, loading by state) belong here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from master.store_schema import ATTEMPTS, TASKS, upsert_statement
from master.tasks import ACTIVE_STATES, TaskRecord

_CHUNK = 500  # ids per IN (...): well under every driver's parameter limit


def load_tasks(session: Session) -> list[TaskRecord]:
    """Every task, oldest submission first (numeric ids in numeric order within one instant)."""
    stmt = sa.select(TASKS).order_by(TASKS.c.submitted_at, sa.func.length(TASKS.c.id),
                                     TASKS.c.id)
    return records_from_result(session.connection().execute(stmt))


_NOT_NULL = frozenset({"retry_delay"})  # a NULL here (a row of an older master): the default


def record_from_row(row: Any) -> TaskRecord:
    """A task record from its row (a mapping), whichever master version wrote it."""
    return TaskRecord.from_json({k: v for k, v in row.items()
                                 if v is not None or k not in _NOT_NULL})


def records_from_result(result: Any) -> list[TaskRecord]:
    """Every row of ``result``, a Core select of the whole tasks table, as a record, as
    ``record_from_row`` makes it: a column is a field, so each row is zipped straight
    into one (half the cost of a mapping per row: 100 rows of a page, 4.4 → 2.2 ms).
    """
    keys = list(result.keys())
    out = []
    for row in result.all():  # fetched at once, not row by row
        data = dict(zip(keys, row))
        for key in _NOT_NULL:
            if data[key] is None:
                del data[key]
        out.append(TaskRecord(**data))
    return out


def upsert_attempts(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert or replace attempt rows by (task id, number), as ``upsert`` does tasks."""
    if rows:
        session.execute(upsert_statement(session, ATTEMPTS, ["task_id", "number"]),
                        sorted(rows, key=lambda r: (str(r["task_id"]), int(r["number"]))))
    return len(rows)


def load_attempts(session: Session, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The stored attempts of these tasks, by task id, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(task_ids), _CHUNK):
        stmt = (sa.select(ATTEMPTS).where(ATTEMPTS.c.task_id.in_(task_ids[i : i + _CHUNK]))
                .order_by(ATTEMPTS.c.task_id, ATTEMPTS.c.number))
        for row in session.execute(stmt).mappings():
            out.setdefault(row["task_id"], []).append(dict(row))
    return out


def insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert tasks that must not exist yet (a clash is an IntegrityError, not an update)."""
    if rows:
        session.execute(sa.insert(TASKS), rows)


def delete(session: Session, ids: list[str]) -> None:
    for i in range(0, len(ids), _CHUNK):
        session.execute(sa.delete(TASKS).where(TASKS.c.id.in_(ids[i : i + _CHUNK])))


def upsert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert or replace whole task rows in one statement per batch (``ON CONFLICT (id) DO
    UPDATE``): safe when another store writes the same ids at the same time. Rows go in id
    order, so two transactions lock common rows in one order and cannot deadlock."""
    if rows:
        session.execute(upsert_statement(session, TASKS, ["id"]),
                        sorted(rows, key=lambda r: str(r["id"])))
    return len(rows)


def update_progress(session: Session, progress: dict[str, tuple[float, float]]) -> int:
    """Write coalesced progress values of STAGING/RUNNING tasks; rows touched."""
    # Literal states, not an expanding IN: executemany() cannot expand parameters.
    active = sa.or_(*[TASKS.c.state == sa.literal_column(f"'{s}'")
                      for s in sorted(ACTIVE_STATES)])
    stmt = (
        sa.update(TASKS)
        .where(TASKS.c.id == sa.bindparam("b_id"), active)
        .values(progress=sa.bindparam("b_progress"), updated_at=sa.bindparam("b_updated"))
    )
    params = [{"b_id": k, "b_progress": p, "b_updated": t}
              for k, (p, t) in sorted(progress.items())]
    count = session.execute(stmt, params).rowcount  # type: ignore[attr-defined]
    return count if count >= 0 else len(params)
