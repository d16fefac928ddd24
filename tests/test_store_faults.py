"""Storage faults against real SQLite files: poison records isolated, atomic creates, and a
database file removed, replaced, moved or made read-only while the store runs.

Everything here uses the real file system and the real SQLite driver; the only trick is an
SQLAlchemy "commit" event, to move the file in the instant between the store's last check
and SQLite's COMMIT. tests/ha/test_store_faults_postgres.py runs those that take `db` or
`store` and are not about the file against PostgreSQL too (read through `store_peek`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import store_peek
from cluster_harness import Cluster, MasterClient, cluster, wait_for  # noqa: F401 - a fixture
from master.store import RecordRefused, Store, StoreError, StoreUnavailable
from master.tasks import TaskRecord
from waiting import until


def task(id: str, **fields: Any) -> TaskRecord:
    record = TaskRecord.new(id, command=f"echo {id}", cpus=0.5, mem=64, now=100.0)
    for key, value in fields.items():
        setattr(record, key, value)
    return record


def poison(id: str) -> TaskRecord:
    return task(id, name="bad \ud800")  # a lone surrogate: SQLite cannot bind it


def rows(db: Path | str) -> dict[str, str]:
    """{id: state} through an independent connection (what another process would see)."""
    return store_peek.states(db)


def seq(db: Path | str) -> int:
    return store_peek.seq(db)


def make(numbers: list[int], *, name: str = "") -> list[TaskRecord]:
    return [TaskRecord.new(str(n), command="true", cpus=0.1, mem=1, now=1.0, name=name)
            for n in numbers]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    s = Store.open(str(db), progress_interval=60.0, probe_interval=0.05)
    try:
        yield s
    finally:
        await s.close()


class Held:
    """Keep the writer thread busy in a solo request, so what is queued meanwhile is one
    batch when released."""

    def __init__(self, store: Store) -> None:
        from master.store import _Op  # the store's own queue: a test of its batching

        self.release = threading.Event()
        self.entered = threading.Event()

        def block(session: Any) -> None:
            self.entered.set()
            self.release.wait(10)

        self.done = store._submit(_Op(work=block, solo=True))

    async def __aenter__(self) -> Held:
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.done


# -- one record that cannot be stored ------------------------------------------------------


async def test_a_poison_save_fails_alone_and_its_batch_is_committed(store: Store,
                                                                    db: Path) -> None:
    async with Held(store):
        goods = [store.save(task(str(i))) for i in range(1, 21)]
        bad = store.save(poison("bad"))
        more = [store.save(task(str(i))) for i in range(21, 31)]
    await asyncio.gather(*goods, *more)  # every other client's save succeeded
    with pytest.raises(RecordRefused, match="refuses task bad"):
        await bad
    assert set(rows(db)) == {str(i) for i in range(1, 31)}
    stats = store.stats()
    assert stats["isolations"] == 1 and stats["records_refused"] == 1
    assert stats["batches_failed"] == 0 and stats["healthy"] == 1
    assert store.fault() is None  # a bad record is not a bad database


async def test_several_poison_records_among_many_cost_few_transactions(store: Store,
                                                                       db: Path) -> None:
    async with Held(store):
        futures = {str(i): store.save(poison(str(i)) if i in (7, 300) else task(str(i)))
                   for i in range(1, 513)}
    results = await asyncio.gather(*futures.values(), return_exceptions=True)
    refused = {tid for tid, r in zip(futures, results) if isinstance(r, RecordRefused)}
    assert refused == {"7", "300"}
    assert len(rows(db)) == 510
    # Bisection: about 2·k·log2(n) = 36 small commits, not n = 512.
    assert store.stats()["batches_committed"] < 60


async def test_a_create_with_a_poison_record_leaves_nothing_and_others_commit(
        store: Store, db: Path) -> None:
    async with Held(store):
        good1 = store.create_tasks(make, 2)
        bad = store.create_tasks(lambda ns: make(ns, name="\ud800"), 3)
        good2 = store.create_tasks(make, 1)
    first, second = await good1, await good2
    with pytest.raises(RecordRefused):
        await bad
    ids = [r.id for r in first + second]
    assert sorted(rows(db)) == sorted(ids)
    assert len(set(ids)) == 3 and seq(db) == max(int(i) for i in ids)  # no numbers burnt


async def test_created_tasks_are_committed_when_the_future_resolves(store: Store,
                                                                    db: Path) -> None:
    records = await store.create_tasks(make, 3)
    assert [r.id for r in records] == ["1", "2", "3"]
    assert rows(db) == {"1": "PENDING", "2": "PENDING", "3": "PENDING"} and seq(db) == 3
    assert [r.id for r in await store.create_tasks(make, 1)] == ["4"]


# -- the database file removed, replaced, moved, made read-only ---------------------------


def _move_away(db: Path) -> Callable[[], None]:
    aside = db.with_name("moved.db")
    os.rename(db, aside)
    return lambda: os.rename(aside, db)


def _replace(db: Path) -> Callable[[], None]:
    original = db.with_name("original.db")
    os.rename(db, original)
    shutil.copyfile(original, db)  # same content, another file
    return lambda: os.replace(original, db)


def _read_only(db: Path) -> Callable[[], None]:
    os.chmod(db, 0o444)  # as root SQLite would write anyway: the store must see the mode
    return lambda: os.chmod(db, 0o644)


@pytest.mark.parametrize(("fault", "reason"), [
    (_move_away, "is gone"), (_replace, "replaced by another file"),
    (_read_only, "read-only"),
])
async def test_writes_fail_loudly_while_the_file_is_not_ours_and_resume_after(
        store: Store, db: Path, fault: Callable[[Path], Callable[[], None]], reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    await store.save(task("s1"))
    caplog.set_level(logging.WARNING, logger="master.store")
    undo = fault(db)
    try:
        assert reason in (store.fault() or "")  # at once, before any write or probe
        assert store.stats()["healthy"] == 0
        for i in range(2, 12):  # many writes during the fault ...
            with pytest.raises(StoreUnavailable, match=reason):
                await store.save(task(str(i)))
        with pytest.raises(StoreUnavailable):
            await store.create_tasks(make, 2)
        await asyncio.sleep(0.3)  # ... and several probes
    finally:
        undo()
    await until(lambda: store.fault() is None, 10)  # recovers by itself
    await store.save(task("12"))
    records = await store.create_tasks(make, 1)
    assert sorted(rows(db)) == sorted(["s1", "12", records[0].id])  # nothing leaked in
    assert records[0].id == "1"  # the failed create allocated nothing
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and reason in errors[0].getMessage()  # one line per fault
    assert sum("takes writes again" in r.getMessage() for r in caplog.records) == 1
    assert store.stats()["faults"] == 1


async def test_a_removed_file_is_reported_and_never_written(store: Store, db: Path) -> None:
    await store.save(task("s1"))
    os.unlink(db)
    with pytest.raises(StoreUnavailable, match="is gone"):
        await store.save(task("2"))
    assert not db.exists()
    assert "is gone" in (store.fault() or "")


async def test_a_fault_is_noticed_and_cleared_while_idle(store: Store, db: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    caplog.set_level(logging.WARNING, logger="master.store")
    undo = _move_away(db)
    await until(lambda: any("cannot take writes" in r.getMessage() for r in caplog.records), 10)
    undo()
    await until(lambda: store._writer.health.reason is None, 10)
    assert any("takes writes again" in r.getMessage() for r in caplog.records)


async def test_a_commit_that_escaped_into_a_moved_file_is_not_acknowledged_and_undone(
        store: Store, db: Path) -> None:
    await store.save(task("s1"))
    aside = db.with_name("moved.db")
    moved = threading.Event()

    def move_before_commit(conn: Any) -> None:
        if not moved.is_set():  # after the store's last check, before SQLite's COMMIT
            moved.set()
            os.rename(db, aside)

    sa.event.listen(store._engine, "commit", move_before_commit)
    try:
        with pytest.raises(StoreUnavailable, match="is gone"):
            await store.create_tasks(make, 2)
    finally:
        sa.event.remove(store._engine, "commit", move_before_commit)
    assert moved.is_set() and store._writer.orphans == ["1", "2"]  # it escaped, and is noted
    os.rename(aside, db)
    await until(lambda: store.fault() is None, 10)
    await store.save(task("9"))
    # The first commit that reached the file again deleted the tasks nobody was told of;
    # their numbers stay used, so no id is ever handed out twice.
    assert sorted(rows(db)) == ["9", "s1"] and store._writer.orphans == []
    assert [r.id for r in await store.create_tasks(make, 1)] == ["3"]


async def test_a_lock_held_too_long_faults_the_store_until_it_is_released(db: Path) -> None:
    store = Store.open(str(db), busy_timeout=0.02, max_lock_wait=0.1, probe_interval=0.05)
    holder = store_peek.WriteLock(db).acquire()
    try:
        with pytest.raises(StoreUnavailable, match="stayed locked"):
            await store.save(task("s1"))
        assert "locked" in (store.fault() or "")
    finally:
        holder.release()
    await until(lambda: store.fault() is None, 10)  # the probe found it free again
    await store.save(task("2"))
    await store.close()


async def test_probes_do_not_write_coalesced_progress_early(store: Store, db: Path) -> None:
    record = task("1")
    record.launch("s1", 101.0)
    await store.save(record)
    store.save_progress("1", 0.5, 102.0)  # due in 60 s (the fixture's progress_interval)
    await asyncio.sleep(0.4)  # about eight idle probes
    assert (store_peek.row(db, "1") or {})["progress"] == 0.0
    await store.flush()
    assert (store_peek.row(db, "1") or {})["progress"] == 0.5


async def test_store_errors_are_store_errors(store: Store) -> None:
    assert issubclass(StoreUnavailable, StoreError) and issubclass(RecordRefused, StoreError)
    with pytest.raises(ValueError):
        store.create_tasks(make, 0)


# -- end to end: a real master process, a real slave, the real file moved away and back -----


def test_database_moved_away_mid_run_end_to_end(cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave(cpus=2, mem=1024)
    api = cluster.api
    done = api.submit([{"command": "true"}] * 3)
    api.wait_terminal(done, timeout=30)
    short = api.submit_one("sleep 1.5", cpus=1)  # ends during the outage
    long = api.submit_one("sleep 120", cpus=1)  # runs all along
    queued = api.submit_one("true", cpus=2)  # PENDING: never fits while they run
    api.wait_state(short, "RUNNING", timeout=30)
    api.wait_state(long, "RUNNING", timeout=30)
    slave_vars = MasterClient(slave.port).vars
    aside = cluster.db.with_name("aside.db")
    os.rename(cluster.db, aside)
    try:
        for _ in range(5):
            status, _, body = api.request("POST", "/master/tasks", {"command": "echo lost"})
            assert status == 503 and b"none was created" in body
        status, _, body = api.request("GET", "/health")
        health = json.loads(body)
        assert status == 503 and health["healthy"] is False and "gone" in health["reason"]
        assert api.vars()["store_healthy"] == "0"
        status, _, body = api.request("POST", f"/master/tasks/{queued}/kill")
        assert status == 503 and b"nothing changed" in body
        assert api.task(queued)["state"] == "PENDING"
        api.wait_state(short, "FINISHED", timeout=30)  # known in memory, not durable:
        time.sleep(1.0)  # (the slave re-sends meanwhile)
        assert int(slave_vars("/slave(1)/vars")["unacked_updates"]) >= 1  # so not acked
    finally:
        os.rename(aside, cluster.db)
    wait_for(lambda: api.request("GET", "/health")[0] == 200, 30, what="/health 200 again")
    after = api.submit_one("true", name="after")
    assert api.kill(queued)["state"] == "KILLED"
    wait_for(lambda: slave_vars("/slave(1)/vars")["unacked_updates"] == "0", 30,
             what="the slave's FINISHED update acknowledged once durable")
    assert cluster.master is not None
    log = cluster.master.output()
    assert log.count("cannot take writes") == 1, log  # one clear line for the fault
    assert log.count("takes writes again") == 1, log
    assert cluster.master.stop() == 0

    cluster.start_master()  # same file, same port
    api = cluster.api
    tasks = {t["id"]: t for t in api.tasks()}
    assert set(tasks) == {*done, short, long, queued, after}  # every 201, nothing else
    assert tasks[short]["state"] == "FINISHED" and tasks[queued]["state"] == "KILLED"
    assert all(tasks[t]["state"] == "FINISHED" for t in done)
    newest = api.submit_one("true")
    assert int(newest) == int(after) + 1  # ids continue: none reused, none skipped
