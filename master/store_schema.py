"""The master's tables, their creation, and the small facts of the ``meta`` table.

Every function takes an open ``Session`` inside the caller's transaction and commits nothing:
the store decides what shares a transaction. Portable SQLAlchemy for SQLite and PostgreSQL;
the two dialects' ``INSERT … ON CONFLICT`` is built in one place (``upsert_statement``), so
that a write never reads first and then decides (two stores on one PostgreSQL database would
both decide the same). Task queries are in ``store_tasks``, the leader epoch in
``store_fencing``.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from master.store_faults import StoreError

SCHEMA_VERSION = "1"

# pg_advisory_xact_lock key held while tables are created, so that masters opening one
# empty database at once do not both create them.
_SCHEMA_LOCK = zlib.crc32(b"cluster-master schema")


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
    retry_delay: Mapped[float | None] = mapped_column(sa.Float)


def _literal(sql: str) -> Any:
    """A constant written into the SQL, not bound: SQLite uses an index on an expression
    only for that very expression, and a bound parameter is not the index's constant."""
    return sa.literal_column(sql)


def _block_of(id_column: Any) -> tuple[Any, Any]:
    """The block of an id as SQL, (its length, all but its last three characters): the
    same blocks as master/task_positions.py's ``block_of``."""
    length = sa.func.length(id_column)
    prefix = sa.case((length > _literal("3"),
                      sa.func.substr(id_column, _literal("1"), length - _literal("3"))),
                     else_=_literal("''"))
    return length, prefix


#: (length(id), its block's prefix): the key of ix_tasks_block_name, in task queries too.
TASK_BLOCK = _block_of(TaskRow.id)

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
# Names within each block of ids: a name filter is counted block by block (one seek each),
# which places a page among a million matches (task_queries.block_matches). SQLite only,
# as the queries that use it are; the id at the end makes it cover them.
SQLITE_TASK_INDEXES = (
    sa.Index("ix_tasks_block_name", *TASK_BLOCK, TaskRow.name, TaskRow.state,
             TaskRow.id).ddl_if(dialect="sqlite"),
)


class AttemptRow(Base):
    """One ended attempt of a task (master/attempts.py's ``Attempt.row()``); written in the
    transaction that saves the task, keyed by task id and attempt number."""

    __tablename__ = "attempts"

    task_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    number: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    slave_id: Mapped[str | None] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))
    launched_at: Mapped[float | None] = mapped_column(sa.Float)
    started_at: Mapped[float | None] = mapped_column(sa.Float)
    finished_at: Mapped[float | None] = mapped_column(sa.Float)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    message: Mapped[str] = mapped_column(sa.Text)
    cpu_seconds: Mapped[float | None] = mapped_column(sa.Float)
    mem_mib: Mapped[float | None] = mapped_column(sa.Float)
    mem_peak_mib: Mapped[float | None] = mapped_column(sa.Float)
    usage_source: Mapped[str | None] = mapped_column(sa.String(32))
    usage_at: Mapped[float | None] = mapped_column(sa.Float)


#: Columns added to existing tables since SCHEMA_VERSION 1, with their SQL type and default:
#: a database made by an older master gets them at open (additive, so the version stays).
_ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "tasks": [("retry_delay", "FLOAT DEFAULT 1.0")],
}


def _add_missing_columns(session: Session) -> None:
    inspector = sa.inspect(session.connection())
    for table, columns in _ADDED_COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for name, ddl in columns:
            if name not in have:
                session.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


class MetaRow(Base):
    """Small facts: schema_version, master_id, opened_at, ``seq.<name>`` counters (last used)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)


class LeaderRow(Base):
    """The leader epoch (one row, id 1): raised by every claim of leadership; see
    ``store_fencing``. Added after schema version 1 was defined: created when missing."""

    __tablename__ = "leadership"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(sa.BigInteger)
    owner: Mapped[str] = mapped_column(sa.Text)
    claimed_at: Mapped[float] = mapped_column(sa.Float)


TASKS = Base.metadata.tables["tasks"]
ATTEMPTS = Base.metadata.tables["attempts"]
META = Base.metadata.tables["meta"]
LEADERSHIP = Base.metadata.tables["leadership"]


def upsert_statement(session: Session, table: sa.Table, keys: list[str],
                     set_: Mapping[str, Any] | None = None) -> Any:
    """``INSERT INTO table … ON CONFLICT (keys) DO UPDATE SET …`` in the session's dialect.

    ``set_`` maps columns to new values (expressions on ``table``'s columns); by default
    every other column takes the inserted value. ``set_={}`` means DO NOTHING.
    The returned statement takes ``.values()``, ``.returning()`` or executemany rows.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # Store.open refuses other databases
        raise StoreError(f"no upsert for the {dialect} dialect")
    if set_ is not None and not set_:
        return stmt.on_conflict_do_nothing(index_elements=keys)
    if set_ is None:
        set_ = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=dict(set_))


def initialize(session: Session) -> str:
    """Create the tables, check the schema version, write (proving we can), return master_id.

    Safe when several masters open one empty database at once: on PostgreSQL they take
    turns (a transaction-scoped advisory lock; its wait is bounded by ``lock_timeout``), on
    SQLite the transaction's BEGIN IMMEDIATE already does.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    Base.metadata.create_all(session.connection())  # new tables (attempts) included
    _add_missing_columns(session)
    sqlite = session.get_bind().dialect.name == "sqlite"
    # A database made before an index was added gets it now.
    for index in TASK_INDEXES + (SQLITE_TASK_INDEXES if sqlite else ()):
        session.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    version = get_meta(session, "schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is not the {SCHEMA_VERSION} this master "
            "understands; use the matching master version or another --db"
        )
    put_meta(session, "schema_version", SCHEMA_VERSION)
    put_meta(session, "opened_at", repr(time.time()))  # proves we can write
    session.execute(upsert_statement(session, META, ["key"], {}).values(
        key="master_id", value=uuid.uuid4().hex))  # the first master's id stays
    master_id = get_meta(session, "master_id")
    assert master_id is not None
    return master_id


def probe(session: Session) -> None:
    """A tiny real write: does the database take writes again?"""
    put_meta(session, "probed_at", repr(time.time()))


def get_meta(session: Session, key: str) -> str | None:
    value = session.execute(sa.select(META.c.value).where(META.c.key == key)).scalar()
    return None if value is None else str(value)


def put_meta(session: Session, key: str, value: str) -> None:
    session.execute(upsert_statement(session, META, ["key"]).values(
        key=key, value=value))


def delete_meta(session: Session, key: str) -> None:
    session.execute(sa.delete(META).where(META.c.key == key))


def load_meta(session: Session, prefix: str) -> dict[str, str]:
    """Every ``meta`` key starting with ``prefix``, with its value."""
    wanted = META.c.key.startswith(prefix, autoescape=True)
    return {row.key: row.value for row in session.execute(
        sa.select(META.c.key, META.c.value).where(wanted))}


def last_number(session: Session, sequence: str) -> int:
    """The last number of ``sequence`` handed out (0 before the first)."""
    value = get_meta(session, f"seq.{sequence}")
    return 0 if value is None else int(value)


def allocate(session: Session, sequence: str, n: int) -> int:
    """Add ``n`` to the counter of ``sequence`` and return its new value, the last number
    now handed out (numbers ``value - n + 1 … value`` are the caller's).

    One statement that increments in place (the row stays locked until commit), so two
    stores on one database never get the same numbers.
    """
    stmt = upsert_statement(session, META, ["key"], {
        "value": sa.cast(sa.cast(META.c.value, sa.BigInteger) + n, sa.Text)})
    value = session.execute(stmt.values(key=f"seq.{sequence}", value=str(n))
                            .returning(META.c.value)).scalar_one()
    return int(value)
