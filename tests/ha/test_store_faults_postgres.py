"""tests/test_store_faults.py's tests, run as they are against the private PostgreSQL.

Poison records isolated, atomic creates, a lock held too long, probes: all of them run here.
Left out are those about the SQLite *file* (moved, replaced, read-only, a commit escaping
into a moved file) and the end-to-end run that moves it: PostgreSQL has no file of ours;
its own faults (restarted, killed, frozen, a COMMIT cut off) are in test_store_pg_faults.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from portable import portable_tests

import test_store_faults
from master.store import Store

SQLITE_ONLY = {
    "test_writes_fail_loudly_while_the_file_is_not_ours_and_resume_after":
        "moves, replaces or chmods the SQLite file",
    "test_a_removed_file_is_reported_and_never_written": "removes the SQLite file",
    "test_a_fault_is_noticed_and_cleared_while_idle": "moves the SQLite file away",
    "test_a_commit_that_escaped_into_a_moved_file_is_not_acknowledged_and_undone":
        "moves the SQLite file during COMMIT",
}

globals().update(portable_tests(test_store_faults, SQLITE_ONLY))


def test_the_fault_tests_run_here_are_the_portable_ones() -> None:
    portable = portable_tests(test_store_faults, SQLITE_ONLY)
    assert {"test_a_poison_save_fails_alone_and_its_batch_is_committed",
            "test_a_lock_held_too_long_faults_the_store_until_it_is_released",
            "test_a_create_with_a_poison_record_leaves_nothing_and_others_commit",
            } <= set(portable)
    assert "test_database_moved_away_mid_run_end_to_end" not in portable  # no db fixture


@pytest.fixture
def db(pg_url: str) -> str:
    return pg_url


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    s = Store.open(db, progress_interval=60.0, probe_interval=0.05)
    try:
        yield s
    finally:
        await s.close()
