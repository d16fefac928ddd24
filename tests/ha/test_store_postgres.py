"""tests/test_store.py's tests, run as they are against the private PostgreSQL.

Every test there that takes the `db` or `store` fixture runs here too, with `db` a fresh
PostgreSQL database's URL. Only those that exercise SQLite itself (its journal, its file
locks held through `sqlite3`, its read-only URI) are left out, each with the reason below;
tests/ha/test_store_pg_faults.py has PostgreSQL's own versions of those.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from portable import portable_tests

import test_store
from master.store import Store

SQLITE_ONLY = {
    "test_database_uses_wal_journal": "asks SQLite for its journal mode",
    "test_locked_database_at_open_gives_clear_error": "holds SQLite's file lock via sqlite3",
    "test_readonly_database_gives_clear_error": "opens the SQLite file read-only (URI)",
}

globals().update(portable_tests(test_store, SQLITE_ONLY))


def test_the_store_tests_run_here_are_the_portable_ones() -> None:
    portable = portable_tests(test_store, SQLITE_ONLY)
    assert len(portable) >= 14 and not set(portable) & set(SQLITE_ONLY)
    assert "test_transient_lock_during_write_is_retried" in portable  # PostgreSQL's locks


@pytest.fixture
def db(pg_url: str) -> str:
    """In place of test_store's SQLite path: the URL of a fresh PostgreSQL database."""
    return pg_url


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    s = Store.open(db, progress_interval=60.0)
    yield s
    await s.close()
