"""tests/test_store.py's tests, run as they are against the private PostgreSQL.

Every test there that takes the `db` or `store` fixture runs here too, with `db` a fresh
PostgreSQL database's URL and `read_row` ("what another process would see") reading through
an engine of its own. Only those that exercise SQLite itself (its journal, its file locks
held through `sqlite3`) are left out, each with the reason below. So a store test added
later runs on both databases without anyone listing it here.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import test_store
from master.store import Store

SQLITE_ONLY = {
    "test_database_uses_wal_journal": "asks SQLite for its journal mode",
    "test_locked_database_at_open_gives_clear_error": "holds SQLite's file lock via sqlite3",
    "test_readonly_database_gives_clear_error": "opens the SQLite file read-only (URI)",
    "test_transient_lock_during_write_is_retried": "holds SQLite's file lock via sqlite3",
    "test_lock_held_too_long_fails_the_batch_with_store_error": "holds SQLite's file lock",
}


def _portable() -> dict[str, Any]:
    found = {}
    for name, item in vars(test_store).items():
        if not name.startswith("test_") or name in SQLITE_ONLY or not callable(item):
            continue
        parameters = inspect.signature(item).parameters
        if "db" in parameters or "store" in parameters:
            found[name] = item
    return found


globals().update(_portable())


def test_the_store_tests_run_here_are_the_portable_ones() -> None:
    portable = _portable()
    assert len(portable) >= 10 and not set(portable) & set(SQLITE_ONLY)
    missing = set(SQLITE_ONLY) - set(vars(test_store))
    assert not missing, f"SQLITE_ONLY names tests that no longer exist: {sorted(missing)}"


@pytest.fixture
def db(pg_url: str) -> str:
    """In place of test_store's SQLite path: the URL of a fresh PostgreSQL database."""
    return pg_url


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    s = Store.open(db, progress_interval=60.0)
    yield s
    await s.close()


@pytest.fixture(autouse=True)
def _read_rows_through_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_row(url: str, task_id: str) -> dict[str, Any] | None:
        engine = sa.create_engine(str(url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.text("SELECT * FROM tasks WHERE id = :id"),
                                   {"id": task_id}).mappings().first()
                return None if row is None else dict(row)
        finally:
            engine.dispose()

    monkeypatch.setattr(test_store, "read_row", read_row)
