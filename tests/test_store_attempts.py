"""The `attempts` table and `retry_delay` against real SQLite files: written in the task's
transaction, read back after a reopen, and added to a database an older master made."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from master.attempts import Attempt, Usage
from master.store import Store
from master.tasks import FAILED, TaskRecord


def failed_attempt(tid: str, number: int, code: int) -> dict[str, Any]:
    return Attempt(tid, number, f"s{number}", state=FAILED, launched_at=100.0 + number,
                   started_at=101.0 + number, finished_at=102.0 + number, exit_code=code,
                   message=f"exited with code {code}",
                   usage=Usage(0.25 * number, 3.0, 4.5, "cgroups v1", 1.7e9)).row()


def rows_in(db: Path, sql: str, *args: object) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


async def test_attempts_are_committed_with_the_task_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    store = Store.open(str(db))
    rec = TaskRecord.new("7", command="exit 1", cpus=1, mem=64, now=100.0, retries=2,
                         retry_delay=0.5)
    first = failed_attempt("7", 1, 1)
    await store.save(rec, [first])
    assert rows_in(db, "SELECT * FROM attempts") == [first]  # durable once the save resolves
    assert rows_in(db, "SELECT retry_delay FROM tasks") == [{"retry_delay": 0.5}]
    second = failed_attempt("7", 2, 2)
    changed = {**first, "message": "changed"}
    await store.save(rec, [changed, second])  # an update and an insert in one save
    assert [r["message"] for r in await store.load_attempts("7")] == ["changed",
                                                                      "exited with code 2"]
    assert await store.load_attempts("nope") == []
    await store.close()

    again = Store.open(str(db))
    try:
        [loaded] = again.load_tasks_blocking()
        assert loaded.retry_delay == 0.5
        by_task = again.load_attempts_blocking(["7", "8"])
        assert list(by_task) == ["7"]
        assert [Attempt.from_row(r).usage for r in by_task["7"]] == [
            Usage(0.25, 3.0, 4.5, "cgroups v1", 1.7e9), Usage(0.5, 3.0, 4.5, "cgroups v1", 1.7e9)]
    finally:
        await again.close()


async def test_a_refused_attempt_row_fails_its_own_save_only(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        good = TaskRecord.new("1", command="x", cpus=1, mem=1, now=1.0)
        bad = TaskRecord.new("2", command="x", cpus=1, mem=1, now=1.0)
        broken = {**failed_attempt("2", 1, 1), "state": None}  # NOT NULL: refused
        futures = [store.save(good, [failed_attempt("1", 1, 0)]), store.save(bad, [broken])]
        await futures[0]
        with pytest.raises(Exception, match="refuses task 2"):
            await futures[1]
        assert [r["task_id"] for r in await store.load_attempts("1")] == ["1"]
        assert await store.load_attempts("2") == []
    finally:
        await store.close()


OLD_SCHEMA = """
CREATE TABLE tasks (id VARCHAR(255) PRIMARY KEY, name TEXT, command TEXT, cpus FLOAT,
  mem FLOAT, timeout FLOAT, retries INTEGER, state VARCHAR(16), progress FLOAT,
  exit_code INTEGER, message TEXT, slave_id VARCHAR(255), attempts INTEGER,
  submitted_at FLOAT, started_at FLOAT, finished_at FLOAT, updated_at FLOAT);
CREATE TABLE meta (key VARCHAR(255) PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO tasks VALUES ('1', 'old', 'exit 1', 1, 64, NULL, 3, 'PENDING', 0, NULL, '',
  NULL, 1, 10.0, NULL, NULL, 10.0);
"""


async def test_a_database_of_an_older_master_gets_the_new_table_and_column(
        tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    store = Store.open(str(db))
    try:
        [rec] = store.load_tasks_blocking()
        assert (rec.id, rec.retries, rec.retry_delay) == ("1", 3, 1.0)  # the default
        await store.save(rec, [failed_attempt("1", 1, 1)])
        assert len(await store.load_attempts("1")) == 1
    finally:
        await store.close()
    assert rows_in(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        {"value": "1"}]  # additive: older masters can still open it
    Store.open(str(db)).close_blocking()  # and opening it again finds nothing to add
