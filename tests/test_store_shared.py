"""Several stores on ONE database at once, as several masters share one PostgreSQL.

Each store has its own writer thread and connections, so their transactions really
interleave. Run here on a SQLite file, and from tests/ha/test_store_shared_postgres.py on the
private PostgreSQL, where reading then writing (instead of one statement that decides) gave
duplicate ids, primary-key failures and a schema created twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import store_peek
from master.store import Store
from test_store_faults import make, task

STORES = 3
ROUNDS = 40






@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


@pytest.fixture
async def stores(db: Path | str) -> AsyncIterator[list[Store]]:
    opened = [Store.open(str(db), progress_interval=60.0) for _ in range(STORES)]
    yield opened
    for store in opened:
        await store.close()


async def test_stores_allocating_at_once_never_hand_out_a_number_twice(
        stores: list[Store], db: Path | str) -> None:
    futures = [store.allocate_ids(3) for _ in range(ROUNDS) for store in stores]
    numbers = [n for batch in await asyncio.gather(*futures) for n in batch]
    assert sorted(numbers) == list(range(1, 3 * ROUNDS * STORES + 1))  # no duplicate, no gap
    assert store_peek.seq(db) == 3 * ROUNDS * STORES
    for batch in await asyncio.gather(*futures):
        assert batch == list(range(batch[0], batch[0] + 3))  # each one consecutive


async def test_stores_creating_tasks_at_once_all_commit_with_distinct_ids(
        stores: list[Store], db: Path | str) -> None:
    futures = [store.create_tasks(make, 2) for _ in range(ROUNDS) for store in stores]
    results = await asyncio.gather(*futures, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    ids = [r.id for batch in results if isinstance(batch, list) for r in batch]
    assert len(ids) == len(set(ids)) == 2 * ROUNDS * STORES
    assert set(store_peek.states(db)) == set(ids)
    # Not even a transaction failed on a clash (the isolation of bad records would hide it).
    assert sum(s.stats()["isolations"] for s in stores) == 0


async def test_stores_saving_the_same_new_tasks_at_once_all_succeed(
        stores: list[Store], db: Path | str) -> None:
    # Every store inserts the same ids at the same time: an upsert that selected first and
    # then inserted failed on the primary key whenever another store won the race.
    ids = [str(i) for i in range(ROUNDS * 2)]
    futures = [store.save(task(tid, submitted_at=float(k))) for tid in ids
               for k, store in enumerate(stores)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    stored = store_peek.query(db, "SELECT id, submitted_at FROM tasks")
    assert sorted(r["id"] for r in stored) == sorted(ids)
    # Each row is one store's whole record, never a mix: the last writer's.
    assert all(r["submitted_at"] in {float(k) for k in range(STORES)} for r in stored)
    assert sum(s.stats()["isolations"] for s in stores) == 0  # no insert met a clash


def test_stores_opening_an_empty_database_at_once_all_succeed(db: Path | str) -> None:
    gate = threading.Barrier(4)
    opened: list[Store] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        gate.wait(30)
        try:
            opened.append(Store.open(str(db)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(opened) == 4 and len({s.master_id for s in opened}) == 1
        assert store_peek.meta(db, "schema_version") == "1"
    finally:
        for store in opened:
            store.close_blocking()


async def test_one_store_sees_what_another_committed(stores: list[Store]) -> None:
    first, second = stores[0], stores[1]
    created = await first.create_tasks(make, 3)
    await first.save(task("x"))
    loaded = {t.id for t in await second.load_tasks()}
    assert loaded == {r.id for r in created} | {"x"}
    assert [r.id for r in await second.create_tasks(make, 1)] == ["4"]
