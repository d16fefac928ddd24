"""SQLAlchemy + psycopg 3 against the private PostgreSQL, restarted under load."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from ha_servers import PostgresServer
from master.store import Store, StoreError
from master.tasks import TaskRecord

ROWS_PER_PHASE = 50
WAIT = 60.0


def test_sqlalchemy_with_psycopg3_reads_and_writes(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(pg_url)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id integer PRIMARY KEY, name text)"))
            conn.execute(sa.text("INSERT INTO t VALUES (:id, :name)"),
                         [{"id": i, "name": f"n{i}"} for i in range(100)])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*), max(name) FROM t")).one() == (100, "n99")
    finally:
        engine.dispose()


class _Writer(threading.Thread):
    """Insert rows one transaction each, for ever; remember those whose commit returned."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        with self.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE rows (id integer PRIMARY KEY)"))
        self.committed: list[int] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        attempt = 0
        while not self.stop.is_set() and attempt < 200_000:
            attempt += 1  # a failed attempt's id is never reused: its outcome is unknown
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text("INSERT INTO rows VALUES (:id)"), {"id": attempt})
                self.committed.append(attempt)
            except sa.exc.DBAPIError:
                self.failures += 1
                time.sleep(0.05)

    def wait_more(self, n: int) -> None:
        target = len(self.committed) + n
        deadline = time.monotonic() + WAIT
        while len(self.committed) < target:
            assert time.monotonic() < deadline, f"the writer is stuck at {len(self.committed)}"
            assert self.is_alive(), "the writer thread died"
            time.sleep(0.02)


def test_restarted_and_killed_under_load_every_committed_row_is_kept(
        own_postgres: PostgresServer) -> None:
    writer = _Writer(own_postgres.create_database("load"))
    writer.start()
    try:
        writer.wait_more(ROWS_PER_PHASE)
        own_postgres.stop()  # fast shutdown: open transactions are rolled back
        own_postgres.start()
        writer.wait_more(ROWS_PER_PHASE)
        own_postgres.kill()  # a crash: recovery from the WAL at start
        own_postgres.start()
        writer.wait_more(ROWS_PER_PHASE)
    finally:
        writer.stop.set()
        writer.join(WAIT)
    assert writer.failures >= 2  # it did write through both outages
    with writer.engine.connect() as conn:
        stored = set(conn.scalars(sa.text("SELECT id FROM rows")))
    writer.engine.dispose()
    assert set(writer.committed) <= stored
    assert len(writer.committed) >= 3 * ROWS_PER_PHASE


def _task(i: int) -> TaskRecord:
    return TaskRecord.new(str(i), command=f"echo {i}", cpus=0.1, mem=16, now=float(i), retries=0)


async def test_the_store_on_postgres_keeps_every_acknowledged_save_across_a_restart(
        own_postgres: PostgresServer) -> None:
    store = Store.open(own_postgres.create_database("store"))
    acknowledged: list[str] = []
    try:
        for i in range(1, 21):
            await store.save(_task(i))
            acknowledged.append(str(i))
        own_postgres.stop()
        try:
            await store.save(_task(21))  # PostgreSQL is down: this save must not be acked
        except StoreError as exc:
            assert "database write failed" in str(exc)
        else:
            raise AssertionError("a save succeeded with PostgreSQL stopped")
        own_postgres.start()
        # The writer thread carries on by itself once the server is back.
        deadline = time.monotonic() + WAIT
        i = 22
        while len(acknowledged) < 40:
            assert time.monotonic() < deadline, f"saves keep failing: {store.stats()}"
            try:
                await store.save(_task(i))
                acknowledged.append(str(i))
            except StoreError:
                pass
            i += 1
        stored = {t.id for t in await store.load_tasks()}
        assert set(acknowledged) <= stored
    finally:
        await store.close()


def test_task_pages_on_postgres_match_a_plain_sort(pg_url: str) -> None:
    """The listing's queries on PostgreSQL (plain terms; a name prefix compared exactly with
    substr): every filter and plan cuts the pages a plain sort does."""
    from sqlalchemy.orm import Session

    from master import task_queries as tq
    from master.api import PageQuery
    from master.store_schema import TaskRow
    from master.task_blocks import BlockCounts
    from master.task_listing import _read_page

    Store.open(pg_url).close_blocking()  # the schema and its indexes, as a master makes them
    states = ["PENDING", "RUNNING", "FINISHED", "KILLED", "FAILED"]
    rows = []
    for i in range(1, 121):
        rec = TaskRecord.new(str(i), command="true", cpus=0.1, mem=1, now=float(i),
                             name=("build-" if i % 3 else "té%_") + str(i))
        rec.state = states[i % len(states)]
        rows.append(rec.to_json())
    engine = sa.create_engine(pg_url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(sa.insert(TaskRow), rows)
        with Session(engine) as session:
            for filters in [(None, "build-1"), (frozenset({"KILLED"}), "té%_"),
                            (frozenset({"KILLED", "PENDING"}), "b"), (None, "té%"),
                            (frozenset({"RUNNING"}), None)]:
                for in_states in (None, 10):
                    for order in ("asc", "desc"):
                        for offset in (0, 7, 30, 70):
                            q = PageQuery(limit=9, offset=offset, states=filters[0],
                                          name=filters[1], order=order)
                            want = sorted(
                                (r for r in rows if (q.states is None or r["state"] in q.states)
                                 and (q.name is None or str(r["name"]).startswith(q.name))),
                                key=lambda r: int(str(r["id"])), reverse=order == "desc")
                            total, got = tq.page(session, q, in_states=in_states)
                            assert total == len(want)
                            assert [t.id for t in got] == [
                                str(r["id"]) for r in want[offset:offset + 9]], q
            # The SQLite-only index is not made here, and the listing's read, given the
            # master's blocks, takes the portable plans instead.
            indexes = set(session.scalars(sa.text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")))
            assert "ix_tasks_order" in indexes and "ix_tasks_block_name" not in indexes
            by_block = BlockCounts([(1, ""), (2, ""), (3, "")], [9, 90, 21], [9, 90, 21])
            named = [str(r["id"]) for r in rows if str(r["name"]).startswith("build-1")]
            total, got = _read_page(session, PageQuery(limit=9, offset=7, name="build-1"),
                                    120, None, by_block)
            assert total == len(named) and [t.id for t in got] == named[7:16]
    finally:
        engine.dispose()
