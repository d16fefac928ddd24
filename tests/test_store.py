"""The store against real SQLite files: durability, batching, coalescing, clear errors.

tests/ha/test_store_postgres.py runs every test here that takes `db` or `store` against a
private PostgreSQL too (`db` a URL there), except those it names as SQLite-only: read the
database through `store_peek`, never sqlite3 directly, in a test meant for both.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import store_peek
from master.store import Store, StoreError
from master.tasks import FINISHED, RUNNING, TaskRecord


def task(id: str, now: float = 100.0) -> TaskRecord:
    return TaskRecord.new(id, command=f"echo {id}", cpus=0.5, mem=64, now=now, retries=2)


def running(id: str) -> TaskRecord:
    record = task(id)
    record.launch("s1", 101.0)
    record.transition(RUNNING, 102.0, attempt=1)
    return record


def read_row(db: Path | str, task_id: str) -> dict[str, Any] | None:
    """Read through a second, independent connection: what another process would see."""
    return store_peek.row(db, task_id)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    s = Store.open(str(db), progress_interval=60.0)
    yield s
    await s.close()


async def test_saved_task_round_trips_every_field(store: Store, db: Path) -> None:
    record = running("1")
    record.message, record.timeout = "started", 30.0
    await store.save(record)
    assert read_row(db, "1") == record.to_json()
    assert await store.load_tasks() == [record]


async def test_terminal_save_is_committed_before_future_resolves(store: Store, db: Path) -> None:
    record = running("1")
    await store.save(record)
    record.transition(FINISHED, 110.0, attempt=1, exit_code=0)
    future = store.save(record)
    await future
    row = read_row(db, "1")
    assert row is not None
    assert (row["state"], row["exit_code"], row["progress"]) == ("FINISHED", 0, 1.0)


async def test_progress_updates_are_coalesced(store: Store, db: Path) -> None:
    await store.save(running("1"))
    before = store.stats()
    for i in range(100):
        store.save_progress("1", i / 100, 200.0 + i)
    assert store.stats()["progress_pending"] == 1
    await store.flush()
    after = store.stats()
    assert after["rows_written"] - before["rows_written"] == 1
    assert after["progress_coalesced"] - before["progress_coalesced"] == 99
    row = read_row(db, "1")
    assert row is not None and (row["progress"], row["updated_at"]) == (0.99, 299.0)


async def test_progress_is_written_after_the_interval_without_a_flush(db: Path) -> None:
    store = Store.open(str(db), progress_interval=0.05)
    try:
        await store.save(running("1"))
        store.save_progress("1", 0.5, 200.0)
        deadline = time.monotonic() + 2.0
        while (read_row(db, "1") or {})["progress"] != 0.5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (read_row(db, "1") or {})["progress"] == 0.5
    finally:
        await store.close()


async def test_save_supersedes_queued_progress_and_terminal_rows_keep_theirs(
    store: Store, db: Path
) -> None:
    record = running("1")
    await store.save(record)
    store.save_progress("1", 0.3, 103.0)
    record.transition(FINISHED, 104.0, attempt=1, exit_code=0)
    store.save(record)
    store.save_progress("1", 0.2, 105.0)  # a late report after the end
    await store.flush()
    row = read_row(db, "1")
    assert row is not None and (row["state"], row["progress"]) == ("FINISHED", 1.0)


async def test_many_saves_are_committed_in_few_batches(store: Store, db: Path) -> None:
    before = store.stats()["batches_committed"]
    futures = [store.save(task(str(i), now=float(i))) for i in range(300)]
    await asyncio.gather(*futures)
    assert store.stats()["batches_committed"] - before < 50
    assert [t.id for t in await store.load_tasks()] == [str(i) for i in range(300)]


async def test_store_reopened_loads_every_task(db: Path) -> None:
    store = Store.open(str(db))
    records = [task(str(i), now=float(i % 3)) for i in range(1, 13)]
    records[4] = running("5")
    for record in records:
        store.save(record)  # not awaited: close() must still commit them
    await store.close()
    reopened = Store.open(str(db))
    try:
        loaded = reopened.load_tasks_blocking()
        assert sorted(loaded, key=lambda t: int(t.id)) == records
        # Oldest submission first, numeric ids in numeric order within one instant.
        assert [t.id for t in loaded] == [
            "3",
            "6",
            "9",
            "12",
            "1",
            "4",
            "7",
            "10",
            "2",
            "8",
            "11",
            "5",
        ]
    finally:
        await reopened.close()


async def test_allocated_ids_are_never_reused_after_restart(db: Path) -> None:
    store = Store.open(str(db))
    first = await store.allocate_ids(3)
    second = await store.allocate_ids(1)
    await store.close()
    reopened = Store.open(str(db))
    try:
        assert (first, second) == ([1, 2, 3], [4])
        assert await reopened.allocate_ids(2) == [5, 6]
        assert await reopened.allocate_ids(1, sequence="launch") == [1]
    finally:
        await reopened.close()


async def test_master_id_survives_reopen(db: Path, tmp_path: Path) -> None:
    store = Store.open(str(db))
    master_id = store.master_id
    await store.close()
    reopened = Store.open(str(db))
    other = Store.open(str(tmp_path / "other.db"))
    try:
        assert len(master_id) == 32 and reopened.master_id == master_id
        assert other.master_id != master_id
    finally:
        await reopened.close()
        await other.close()


async def test_database_uses_wal_journal(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_in_memory_url_works_on_the_single_writer_thread() -> None:
    store = Store.open("sqlite://")
    try:
        await store.save(task("1"))
        assert [t.id for t in await store.load_tasks()] == ["1"]
    finally:
        await store.close()


def test_locked_database_at_open_gives_clear_error(db: Path) -> None:
    sqlite3.connect(db).close()  # an existing, empty database
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process") as info:
            Store.open(str(db), busy_timeout=0.1)
        assert str(db) in str(info.value) and "--db" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    Store.open(str(db)).close_blocking()  # usable once the lock is gone


def test_missing_directory_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"directory .*nope does not exist; create it"):
        Store.open(str(tmp_path / "nope" / "master.db"))


def test_readonly_directory_gives_clear_error(tmp_path: Path) -> None:
    # Root ignores chmod, so use a parent that is a regular file: never writable as a dir.
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for url in (str(not_a_dir / "master.db"), f"sqlite:///{not_a_dir}/sub/master.db"):
        with pytest.raises(StoreError, match="is a file, not a directory"):
            Store.open(url)


def test_readonly_database_gives_clear_error(db: Path) -> None:
    Store.open(str(db)).close_blocking()
    with pytest.raises(StoreError, match="is read-only"):
        Store.open(f"sqlite:///file:{db}?mode=ro&uri=true")


@pytest.mark.parametrize("url", ["://nothing", "nosuchdb://host/x", "postgresql://u@h:port/x"])
def test_unusable_url_gives_clear_error(url: str) -> None:
    with pytest.raises(StoreError) as info:
        Store.open(url)
    message = str(info.value)
    assert message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_transient_lock_during_write_is_retried(db: Path) -> None:
    store = Store.open(str(db), busy_timeout=0.05)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:  # another "process" holding the write lock for ~0.3 s
        held = store_peek.WriteLock(db).acquire()
        locked.set()
        release.wait(5)
        held.release()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(5)
        started = time.monotonic()
        future = store.save(running("1"))
        assert time.monotonic() - started < 0.05  # the loop never waits on the lock
        await asyncio.sleep(0.3)
        assert not future.done() and read_row(db, "1") is None
        release.set()
        await asyncio.wait_for(future, 5)
        assert store.stats()["lock_retries"] >= 1
        assert store.stats()["batches_failed"] == 0
        assert (read_row(db, "1") or {}).get("state") == "RUNNING"
    finally:
        release.set()
        holder.join()
        await store.close()


async def test_lock_held_too_long_fails_the_batch_with_store_error(db: Path) -> None:
    store = Store.open(str(db), busy_timeout=0.02, max_lock_wait=0.2)
    holder = store_peek.WriteLock(db).acquire()
    try:
        with pytest.raises(StoreError, match="stayed locked"):
            await asyncio.wait_for(store.save(running("1")), 5)
        assert store.stats()["batches_failed"] == 1
    finally:
        holder.release()
    await store.save(running("2"))  # the writer carries on once the lock is gone
    assert read_row(db, "2") is not None
    await store.close()


async def test_failed_batch_does_not_stop_later_writes(store: Store, db: Path) -> None:
    bad = task("bad")
    bad.cpus = object()  # type: ignore[assignment]  # the driver cannot bind this
    with pytest.raises(StoreError, match="database write failed"):
        await store.save(bad)
    await store.save(task("good"))
    assert read_row(db, "good") is not None and read_row(db, "bad") is None


async def test_store_refuses_work_after_close(db: Path) -> None:
    store = Store.open(str(db))
    await store.close()
    await store.close()  # twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.save(task("1"))
    with pytest.raises(StoreError, match="closed"):
        store.save_progress("1", 0.5, 1.0)


async def test_progress_of_many_tasks_in_one_batch_is_written_with_their_saves(
    store: Store, db: Path
) -> None:
    # Regression: the coalesced UPDATE once used an expanding IN with executemany(), which
    # failed for two or more tasks and took the whole batch (task saves too) down with it.
    for tid in ("1", "2", "3"):
        await store.save(running(tid))
    for i, tid in enumerate(("1", "2", "3")):
        store.save_progress(tid, 0.1 * (i + 1), 300.0)
    finished = running("4")
    finished.transition(FINISHED, 310.0, attempt=1, exit_code=0)
    await store.save(finished)  # same batch as the three progress values
    assert [(read_row(db, t) or {})["progress"] for t in ("1", "2", "3")] == [
        pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3)]
    assert (read_row(db, "4") or {})["state"] == "FINISHED"
    assert store.stats()["batches_failed"] == 0
