"""The master's tables and the statements the store's writer thread runs on them.

Every function takes an open ``Session`` inside the caller's transaction and commits nothing:
the store decides what shares a transaction. Pure SQLAlchemy, portable across dialects.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from master.store_faults import StoreError
from master.tasks import ACTIVE_STATES, TaskRecord

SCHEMA_VERSION = "1"


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    """One task; the columns are exactly ``TaskRecord``'s fields."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    command: Mapped[str] = mapped_column(sa.Text)
    cpus: Mapped[float] = mapped_column(sa.Float)
    mem: Mapped[float] = mapped_column(sa.Float)
    timeout: Mapped[float | None] = mapped_column(sa.Float)
    retries: Mapped[int] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    progress: Mapped[float] = mapped_column(sa.Float)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    message: Mapped[str] = mapped_column(sa.Text)
    slave_id: Mapped[str | None] = mapped_column(sa.String(255))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    submitted_at: Mapped[float | None] = mapped_column(sa.Float)
    started_at: Mapped[float | None] = mapped_column(sa.Float)
    finished_at: Mapped[float | None] = mapped_column(sa.Float)
    updated_at: Mapped[float | None] = mapped_column(sa.Float)


# Paged and filtered listings, counts by state and retention, without full scans (the
# queries are master/task_queries.py). Ids are numbers as text: (length(id), id) is their
# numeric order. `initialize` adds any of these an existing database lacks.
TASK_INDEXES = (
    sa.Index("ix_tasks_order", sa.func.length(TaskRow.id), TaskRow.id, TaskRow.state,
             TaskRow.name),
    sa.Index("ix_tasks_state_order", TaskRow.state, sa.func.length(TaskRow.id), TaskRow.id),
    sa.Index("ix_tasks_name_state", TaskRow.name, TaskRow.state),
    sa.Index("ix_tasks_finished", TaskRow.finished_at),
)


class MetaRow(Base):
    """Small facts: schema_version, master_id, opened_at, ``seq.<name>`` counters (last used)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)


def initialize(session: Session) -> str:
    """Create the tables, check the schema version, write (proving we can), return master_id."""
    Base.metadata.create_all(session.connection())
    for index in TASK_INDEXES:  # a database made before an index was added gets it now
        session.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    version = session.get(MetaRow, "schema_version")
    if version is not None and version.value != SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version.value} is not the {SCHEMA_VERSION} this master "
            "understands; use the matching master version or another --db"
        )
    session.merge(MetaRow(key="schema_version", value=SCHEMA_VERSION))
    session.merge(MetaRow(key="opened_at", value=repr(time.time())))  # proves we can write
    master = session.get(MetaRow, "master_id")
    if master is None:
        master = MetaRow(key="master_id", value=uuid.uuid4().hex)
        session.add(master)
    return master.value


def probe(session: Session) -> None:
    """A tiny real write: does the database take writes again?"""
    session.merge(MetaRow(key="probed_at", value=repr(time.time())))


def load_tasks(session: Session) -> list[TaskRecord]:
    table = Base.metadata.tables["tasks"]
    stmt = sa.select(table).order_by(table.c.submitted_at, sa.func.length(table.c.id), table.c.id)
    return [TaskRecord.from_json(dict(row)) for row in session.execute(stmt).mappings()]


def last_number(session: Session, sequence: str) -> int:
    """The last number of ``sequence`` handed out (0 before the first)."""
    table = Base.metadata.tables["meta"]
    value = session.execute(
        sa.select(table.c.value).where(table.c.key == f"seq.{sequence}")).scalar()
    return 0 if value is None else int(value)


def set_last_number(session: Session, sequence: str, last: int) -> None:
    table = Base.metadata.tables["meta"]
    key = f"seq.{sequence}"
    done = session.execute(sa.update(table).where(table.c.key == key).values(value=str(last)))
    if not done.rowcount:  # type: ignore[attr-defined]
        session.execute(sa.insert(table).values(key=key, value=str(last)))


def insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert tasks that must not exist yet (a clash is an IntegrityError, not an update)."""
    if rows:
        session.execute(sa.insert(TaskRow), rows)


def delete(session: Session, ids: list[str]) -> None:
    for i in range(0, len(ids), 500):
        session.execute(sa.delete(TaskRow).where(TaskRow.id.in_(ids[i : i + 500])))


def upsert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert new ids, update known ones: portable (no dialect-specific ON CONFLICT)."""
    ids = [r["id"] for r in rows]
    known: set[str] = set()
    for i in range(0, len(ids), 500):
        known.update(session.scalars(sa.select(TaskRow.id).where(TaskRow.id.in_(ids[i : i + 500]))))
    new = [r for r in rows if r["id"] not in known]
    old = [r for r in rows if r["id"] in known]
    if new:
        session.execute(sa.insert(TaskRow), new)
    if old:
        session.execute(sa.update(TaskRow), old)
    return len(rows)


def update_progress(session: Session, progress: dict[str, tuple[float, float]]) -> int:
    """Write coalesced progress values of STAGING/RUNNING tasks; rows touched."""
    table = Base.metadata.tables["tasks"]
    # Literal states, not an expanding IN: executemany() cannot expand parameters.
    active = sa.or_(*[table.c.state == sa.literal_column(f"'{s}'")
                      for s in sorted(ACTIVE_STATES)])
    stmt = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"), active)
        .values(progress=sa.bindparam("b_progress"), updated_at=sa.bindparam("b_updated"))
    )
    params = [{"b_id": k, "b_progress": p, "b_updated": t} for k, (p, t) in progress.items()]
    count = session.execute(stmt, params).rowcount  # type: ignore[attr-defined]
    return count if count >= 0 else len(params)
