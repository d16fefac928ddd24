"""Fencing: the leader epoch in the database, and a deposed master's writes refused.

Several stores on ONE database play the masters. Every test here runs on a SQLite file and,
from tests/ha/test_store_fencing_postgres.py, on the private PostgreSQL (`db` a URL there).
The database is read through `store_peek` (a connection of its own).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import store_peek
from master.store import (
    RecordRefused,
    Store,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    _Op,
)
from test_store_faults import make, task

WAIT = 30.0






@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


@pytest.fixture
async def stores(db: Path | str) -> AsyncIterator[Callable[[], Store]]:
    """Open stores on the one database (as many as the test wants); all closed at the end."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(Store.open(str(db), progress_interval=60.0, probe_interval=0.05))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL the store's engine runs meanwhile (an SQLAlchemy event: it only listens)."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store._engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", note)


async def test_each_claim_raises_the_epoch_by_one_and_records_its_owner(
        stores: Callable[[], Store], db: Path | str) -> None:
    a, b = stores(), stores()
    assert (a.epoch, b.epoch) == (None, None) and store_peek.leadership(db) is None
    assert await a.claim_leadership("master-a") == 1
    assert store_peek.leadership(db) == (1, "master-a")
    assert await b.claim_leadership("master-b") == 2
    assert await a.claim_leadership("master-a") == 3
    assert (a.epoch, b.epoch) == (3, 2)
    assert store_peek.leadership(db) == (3, "master-a")
    assert a.stats()["epoch"] == 3


async def test_a_deposed_store_writes_nothing_and_the_new_leader_writes(
        stores: Callable[[], Store], db: Path | str) -> None:
    a, b = stores(), stores()
    await a.claim_leadership("master-a")
    await a.save(task("a1"))
    assert [r.id for r in await a.create_tasks(make, 2)] == ["1", "2"]
    await b.claim_leadership("master-b")  # a has not noticed: nothing told it
    with pytest.raises(StoreFenced, match=r"master 'master-b' claimed leadership epoch 2"):
        await a.save(task("a2"))
    with pytest.raises(StoreFenced):
        await a.create_tasks(make, 3)
    with pytest.raises(StoreFenced):
        await a.allocate_ids(5)
    with pytest.raises(StoreFenced):
        await a.put_meta("slave.x", "credential")
    with pytest.raises(StoreFenced):
        await a.delete_meta("master_id")
    stored = store_peek.states(db)
    assert set(stored) == {"a1", "1", "2"}  # nothing of a's since b claimed
    assert store_peek.seq(db) == 2 and store_peek.meta(db, "slave.x") is None
    assert store_peek.meta(db, "master_id") == a.master_id
    await b.save(task("b1"))
    assert [r.id for r in await b.create_tasks(make, 1)] == ["3"]  # none burnt by a
    assert set(store_peek.states(db)) == {"a1", "1", "2", "b1", "3"}
    assert "master-b" in (a.fenced() or "") and "master-b" in (a.fault() or "")
    assert a.stats()["fenced"] == 1 and a.stats()["healthy"] == 0
    assert b.fenced() is None and b.fault() is None and b.stats()["fenced"] == 0
    # Reads still work for the deposed one (it may become a standby).
    assert {t.id for t in await a.load_tasks()} == {"a1", "1", "2", "b1", "3"}


async def test_a_fenced_batch_is_never_retried_isolated_or_refused_piecemeal(
        stores: Callable[[], Store], db: Path | str,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = stores(), stores()
    await a.claim_leadership("master-a")
    await b.claim_leadership("master-b")
    before = a.stats()
    caplog.set_level(logging.WARNING, logger="master.store")
    release = threading.Event()
    held = a._submit(_Op(work=lambda _s: release.wait(10), solo=True))  # queue one batch
    futures = [a.save(task(str(i))) for i in range(20)]
    release.set()
    await held
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(type(r) is StoreFenced for r in results), results
    assert not any(isinstance(r, (StoreUnavailable, RecordRefused)) for r in results)
    after = a.stats()
    for counter in ("lock_retries", "reconnects", "isolations", "records_refused",
                    "batches_committed", "faults"):
        assert after[counter] == before[counter], counter
    assert after["writes_fenced"] - before["writes_fenced"] == 20
    with statements(a) as seen:  # known fenced: later writes fail without a database trip
        with pytest.raises(StoreFenced):
            await a.save(task("late"))
    assert seen == []
    assert store_peek.states(db) == {}
    fenced_lines = [r for r in caplog.records if "claimed leadership epoch 2" in r.getMessage()]
    assert len(fenced_lines) == 1  # one line when the term was lost, not one per write
    assert issubclass(StoreFenced, StoreError) and not issubclass(StoreFenced, StoreUnavailable)


async def test_concurrent_claims_serialize_and_only_the_last_one_writes(
        stores: Callable[[], Store], db: Path | str) -> None:
    contenders = [stores() for _ in range(4)]
    epochs = await asyncio.gather(*[s.claim_leadership(f"m{i}")
                                    for i, s in enumerate(contenders)])
    assert sorted(epochs) == [1, 2, 3, 4]
    winner = contenders[epochs.index(4)]
    assert store_peek.leadership(db) == (4, f"m{epochs.index(4)}")
    for i, store in enumerate(contenders):
        if store is winner:
            await store.save(task(f"t{i}"))
        else:
            with pytest.raises(StoreFenced):
                await store.save(task(f"t{i}"))
    assert list(store_peek.states(db)) == [f"t{epochs.index(4)}"]


async def test_a_write_that_passed_its_check_lands_before_the_next_claim_takes_effect(
        stores: Callable[[], Store], db: Path | str) -> None:
    """The claim waits for a's write in flight, so b's recovery after its claim sees it."""
    a, b = stores(), stores()
    await a.claim_leadership("master-a")
    checked, release = threading.Event(), threading.Event()

    def pause_after_the_check(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "leadership" in statement and not checked.is_set():
            checked.set()
            release.wait(WAIT)

    sa.event.listen(a._engine, "after_cursor_execute", pause_after_the_check)
    try:
        in_flight = a.save(task("in-flight"))
        await asyncio.get_running_loop().run_in_executor(None, checked.wait, WAIT)
        assert checked.is_set()
        claim = b.claim_leadership("master-b")
        recovered = b.load_tasks()  # queued right behind the claim on b's writer
        await asyncio.sleep(0.5)
        assert not claim.done()  # it waits for the write that passed its check
        release.set()
        await asyncio.wait_for(in_flight, WAIT)  # a's write was in time: it lands
        assert await asyncio.wait_for(claim, WAIT) == 2
        assert "in-flight" in {t.id for t in await recovered}
    finally:
        release.set()
        sa.event.remove(a._engine, "after_cursor_execute", pause_after_the_check)
    with pytest.raises(StoreFenced):
        await a.save(task("after"))
    assert store_peek.row(db, "after") is None


async def test_claiming_again_starts_a_new_term_and_fences_the_other(
        stores: Callable[[], Store], db: Path | str) -> None:
    a, b = stores(), stores()
    await a.claim_leadership("master-a")
    await b.claim_leadership("master-b")
    with pytest.raises(StoreFenced):
        await a.save(task("x"))
    assert await a.claim_leadership("master-a") == 3  # elected again
    assert a.fenced() is None and a.fault() is None
    await a.save(task("x"))
    with pytest.raises(StoreFenced, match="'master-a' claimed leadership epoch 3"):
        await b.save(task("y"))
    assert set(store_peek.states(db)) == {"x"}


async def test_a_store_that_never_claimed_checks_nothing(
        stores: Callable[[], Store], db: Path | str) -> None:
    """A single master without --zk never claims: its writes are exactly as before."""
    single = stores()
    with statements(single) as seen:
        await single.save(task("s1"))
        await single.create_tasks(make, 2)
        await single.put_meta("k", "v")
    assert seen and not any("leadership" in s for s in seen)
    assert single.epoch is None and single.stats()["epoch"] == 0
    claimed = stores()
    await claimed.claim_leadership("other")
    await single.save(task("s2"))  # no term of its own, so none to lose
    with statements(claimed) as seen:
        await claimed.save(task("c1"))
    assert sum("leadership" in s for s in seen) == 1  # one check per write transaction
    assert set(store_peek.states(db)) == {"s1", "1", "2", "s2", "c1"}


async def test_claim_refuses_a_bad_owner(stores: Callable[[], Store]) -> None:
    store = stores()
    for owner in ("", "x" * 1025, 7):
        with pytest.raises(ValueError, match="owner"):
            store.claim_leadership(owner)  # type: ignore[arg-type]
    assert store.epoch is None


async def test_a_database_from_before_fencing_gains_the_epoch_table_at_open(
        db: Path | str) -> None:
    old = Store.open(str(db))
    await old.save(task("kept"))
    await old.close()
    store_peek.execute(db, "DROP TABLE leadership")  # as the previous version left it
    reopened = Store.open(str(db))
    try:
        assert await reopened.claim_leadership("upgraded") == 1
        await reopened.save(task("after"))
        assert set(store_peek.states(db)) == {"kept", "after"}
    finally:
        await reopened.close()
