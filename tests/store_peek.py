"""The store's database as another process sees it, for the store tests on both databases.

`db` is what the tests' `db` fixture gives: a SQLite file's path (tests/test_store*.py), or a
PostgreSQL URL (the same tests run from tests/ha/ against the private server). Everything
here goes through a connection of its own — sqlite3 itself for a file, an engine that keeps
no connection for a URL — never through the store under test.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool


def is_url(db: Path | str) -> bool:
    return "://" in str(db)


def query(db: Path | str, sql: str, params: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Rows of `sql` (named `:params`) as dicts, read through an independent connection."""
    if not is_url(db):
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params or {}).fetchall()]
        finally:
            conn.close()
    engine = sa.create_engine(str(db), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params or {}).mappings()]
    finally:
        engine.dispose()


def execute(db: Path | str, sql: str) -> None:
    """Run one statement and commit, as another program changing the database would."""
    if not is_url(db):
        conn = sqlite3.connect(db)
        try:
            with conn:  # commits
                conn.execute(sql)
        finally:
            conn.close()
        return
    engine = sa.create_engine(str(db), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def row(db: Path | str, task_id: str) -> dict[str, Any] | None:
    found = query(db, "SELECT * FROM tasks WHERE id = :id", {"id": task_id})
    return found[0] if found else None


def states(db: Path | str) -> dict[str, str]:
    """{task id: state} of every stored task."""
    return {r["id"]: r["state"] for r in query(db, "SELECT id, state FROM tasks")}


def seq(db: Path | str, sequence: str = "task") -> int:
    """The last number of `sequence` handed out (0 before the first)."""
    found = query(db, "SELECT value FROM meta WHERE key = :k", {"k": f"seq.{sequence}"})
    return int(found[0]["value"]) if found else 0


def meta(db: Path | str, key: str) -> str | None:
    found = query(db, "SELECT value FROM meta WHERE key = :k", {"k": key})
    return str(found[0]["value"]) if found else None


def leadership(db: Path | str) -> tuple[int, str] | None:
    found = query(db, "SELECT epoch, owner FROM leadership")
    return None if not found else (int(found[0]["epoch"]), str(found[0]["owner"]))


class WriteLock:
    """Another process holding what the store's writes need, until `release()`.

    SQLite: its write lock (BEGIN EXCLUSIVE). PostgreSQL: EXCLUSIVE locks on the store's
    tables (reads pass, writes wait). Acquire and release on one thread.
    """

    def __init__(self, db: Path | str) -> None:
        self.db = db
        self._sqlite: sqlite3.Connection | None = None
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None

    def acquire(self) -> WriteLock:
        if not is_url(self.db):
            self._sqlite = sqlite3.connect(self.db, isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
            return self
        self._engine = sa.create_engine(str(self.db), poolclass=NullPool)
        self._conn = self._engine.connect()
        self._conn.execute(sa.text("LOCK TABLE tasks, meta IN EXCLUSIVE MODE"))
        return self

    def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._conn is not None:
            self._conn.rollback()
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
