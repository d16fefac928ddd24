"""The store against PostgreSQL's own faults: restarted, killed, frozen (SIGSTOP), a COMMIT
cut off, locks held by another session, a frozen master's open transaction, bad settings.

Each test that stops, kills or freezes the server has its own (`own_postgres`). Timeouts are
shortened (`FAST`) so that each fault shows within a second or two; the waits are generous.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import store_peek
from ha_servers import PostgresServer
from master.store import (
    PgTuning,
    RecordRefused,
    Store,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    _Op,
)
from master.store_schema import _SCHEMA_LOCK
from test_store_faults import make, task
from waiting import until

WAIT = 60.0
FAST = PgTuning(stall=0.5, probe_timeout=0.5, connect_timeout=2)






@pytest.fixture
async def served(own_postgres: PostgresServer) -> AsyncIterator[tuple[PostgresServer, str]]:
    yield own_postgres, own_postgres.create_database("store")


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("restart", ["stop", "kill"])
async def test_the_first_write_after_a_restart_succeeds(
        served: tuple[PostgresServer, str], restart: str) -> None:
    server, url = served
    store = Store.open(url)
    try:
        await store.save(task("a"))
        getattr(server, restart)()  # a clean stop, or a crash
        server.start()
        await store.save(task("b"))  # its pooled connection is dead: replaced, tried again
        await store.create_tasks(make, 1)
        assert store.stats()["batches_failed"] == 0 and store.fault() is None
        assert store.stats()["reconnects"] == 1
        assert {t.id for t in await store.load_tasks()} == {"a", "b", "1"}
        assert set(store_peek.states(url)) == {"a", "b", "1"}
    finally:
        await store.close()


async def test_a_killed_server_is_reported_once_and_the_store_resumes_by_itself(
        served: tuple[PostgresServer, str], caplog: pytest.LogCaptureFixture) -> None:
    server, url = served
    store = Store.open(url, probe_interval=0.1, postgres=FAST)
    try:
        await store.save(task("s1"))
        caplog.set_level(logging.WARNING, logger="master.store")
        server.kill()
        for i in range(2, 7):
            with pytest.raises(StoreUnavailable, match="database write failed"):
                await asyncio.wait_for(store.save(task(str(i))), WAIT)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.create_tasks(make, 2), WAIT)
        assert store.fault() is not None and store.stats()["healthy"] == 0
        assert store.stats()["reconnects"] >= 1  # each lost connection was tried again
        await asyncio.sleep(0.5)  # several probes, still failing
        server.start()
        await until(lambda: store.fault() is None, WAIT)  # no write needed: probes
        await store.save(task("7"))
        assert [r.id for r in await store.create_tasks(make, 1)] == ["1"]
        assert set(store_peek.states(url)) == {"s1", "7", "1"}  # the failed left nothing
        assert len(errors(caplog)) == 1 and "cannot take writes" in errors(caplog)[0]
        assert sum("takes writes again" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


async def test_a_frozen_server_fails_writes_within_seconds_and_they_resume_after(
        served: tuple[PostgresServer, str], caplog: pytest.LogCaptureFixture) -> None:
    server, url = served
    store = Store.open(url, probe_interval=0.1, postgres=FAST)
    try:
        await store.save(task("1"))
        caplog.set_level(logging.WARNING, logger="master.store")
        server.freeze()  # its sockets stay open and acknowledged: nothing answers
        try:
            with pytest.raises(StoreUnavailable, match="stopped answering"):
                await asyncio.wait_for(store.save(task("2")), WAIT)
            assert "stopped answering" in (store.fault() or "")
            assert store.stats()["connections_cut"] >= 1
            for i in range(3, 6):  # now known out of reach: no new wait for each
                with pytest.raises(StoreUnavailable, match="stopped answering"):
                    await asyncio.wait_for(store.save(task(str(i))), WAIT)
            await asyncio.sleep(0.5)  # probes meanwhile
        finally:
            server.thaw()
        await until(lambda: store.fault() is None, WAIT)
        await store.save(task("6"))
        assert set(store_peek.states(url)) == {"1", "6"}
        assert len(errors(caplog)) == 1, errors(caplog)  # one line for the whole outage
        assert sum("takes writes again" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


async def test_a_read_of_a_frozen_server_fails_instead_of_hanging(
        served: tuple[PostgresServer, str]) -> None:
    server, url = served
    store = Store.open(url, postgres=FAST)
    try:
        await store.save(task("1"))
        server.freeze()
        try:
            with pytest.raises(StoreUnavailable, match="stopped answering"):
                await asyncio.wait_for(store.load_tasks(), WAIT)
        finally:
            server.thaw()
        assert [t.id for t in await store.load_tasks()] == ["1"]
    finally:
        await store.close()


async def test_a_commit_cut_off_is_not_acknowledged_and_its_tasks_are_undone(
        served: tuple[PostgresServer, str]) -> None:
    """The server freezes just as COMMIT is sent: nobody knows if it landed. The create
    fails, and the next commit deletes its tasks if they did land, so none survives that a
    client was told does not exist."""
    server, url = served
    store = Store.open(url, probe_interval=0.1, postgres=FAST)
    frozen = threading.Event()

    def freeze_before_commit(conn: Any) -> None:
        if not frozen.is_set():
            frozen.set()
            server.freeze()

    try:
        await store.save(task("s1"))
        sa.event.listen(store._engine, "commit", freeze_before_commit)
        try:
            with pytest.raises(StoreUnavailable, match="during COMMIT"):
                await asyncio.wait_for(store.create_tasks(make, 2), WAIT)
        finally:
            sa.event.remove(store._engine, "commit", freeze_before_commit)
            server.thaw()
        assert frozen.is_set() and store._writer.orphans == ["1", "2"]
        await until(lambda: store.fault() is None, WAIT)
        await store.save(task("9"))
        assert store._writer.orphans == []
        assert set(store_peek.states(url)) == {"s1", "9"}  # whichever way the COMMIT went
        later = [r.id for r in await store.create_tasks(make, 1)]
        assert later in (["1"], ["3"])  # its numbers reused only if it did not land
        assert later == [str(store_peek.seq(url))]
    finally:
        await store.close()


async def test_a_lock_held_by_another_session_is_waited_for_then_reported(
        pg_url: str) -> None:
    store = Store.open(pg_url, busy_timeout=0.05, max_lock_wait=0.5)
    try:
        engine = sa.create_engine(pg_url)
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT id FROM tasks FOR UPDATE"))
            holder.execute(sa.text("LOCK TABLE meta IN EXCLUSIVE MODE"))
            with pytest.raises(StoreUnavailable, match="stayed locked"):
                await asyncio.wait_for(store.allocate_ids(1), WAIT)
            assert store.stats()["lock_retries"] >= 2
            pending = store.allocate_ids(1)
            await asyncio.sleep(0.2)
            holder.rollback()
        engine.dispose()
        assert await asyncio.wait_for(pending, WAIT) == [1]  # retried until free
    finally:
        await store.close()


def test_an_open_waits_for_another_opening_master_and_says_so_when_too_long(
        pg_url: str) -> None:
    info = sa.engine.make_url(pg_url)
    conninfo = (f"host={info.host} port={info.port} user={info.username} "
                f"password={info.password} dbname={info.database}")
    with psycopg.connect(conninfo, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))  # "creating tables"
        with pytest.raises(StoreError, match="locked by another process"):
            Store.open(pg_url, busy_timeout=0.2)
        holder.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
    Store.open(pg_url).close_blocking()


async def test_a_nul_character_is_refused_alone(pg_url: str) -> None:
    store = Store.open(pg_url, progress_interval=60.0)
    try:
        release = threading.Event()
        held = store._submit(_Op(work=lambda _s: release.wait(10), solo=True))
        good = [store.save(task(str(i))) for i in range(5)]
        bad = store.save(task("bad", name="nul \x00 inside"))  # PostgreSQL text cannot hold it
        release.set()
        await held
        await asyncio.gather(*good)
        with pytest.raises(RecordRefused, match="refuses task bad"):
            await bad
        assert set(store_peek.states(pg_url)) == {str(i) for i in range(5)}
        assert store.fault() is None
    finally:
        await store.close()


async def test_a_frozen_masters_open_transaction_cannot_block_the_next_claim(
        pg_url: str) -> None:
    """A leader stopped (SIGSTOP) inside a write transaction holds its epoch row; the server
    ends that session after idle_in_transaction_timeout, so the next leader's claim goes
    through, and the old leader's write, once it runs again, is fenced: nothing lands."""
    quick = PgTuning(idle_in_transaction_timeout=1.0, stall=0.5, probe_timeout=0.5)
    old = Store.open(pg_url, postgres=quick)
    new = Store.open(pg_url, postgres=quick)
    checked, resume = threading.Event(), threading.Event()

    def stop_after_the_check(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "leadership" in statement and not checked.is_set():
            checked.set()
            resume.wait(WAIT)  # the old master's thread, stopped mid-transaction

    try:
        await old.claim_leadership("old")
        sa.event.listen(old._engine, "after_cursor_execute", stop_after_the_check)
        write = old.save(task("late"))
        await asyncio.get_running_loop().run_in_executor(None, checked.wait, WAIT)
        assert await asyncio.wait_for(new.claim_leadership("new"), WAIT) == 2
        await new.save(task("fresh"))
        resume.set()
        with pytest.raises(StoreFenced, match="'new' claimed leadership epoch 2"):
            await asyncio.wait_for(write, WAIT)  # its session was ended; retried: fenced
        assert set(store_peek.states(pg_url)) == {"fresh"}
    finally:
        resume.set()
        sa.event.remove(old._engine, "after_cursor_execute", stop_after_the_check)
        await old.close()
        await new.close()


async def test_the_sessions_have_the_timeouts_and_a_setting_in_the_url_wins(
        pg_url: str) -> None:
    def settings(session: Any) -> dict[str, str]:
        names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
                 "application_name", "tcp_keepalives_idle")
        return {n: session.execute(sa.text(f"SHOW {n}")).scalar() for n in names}

    store = Store.open(pg_url, busy_timeout=2.5)
    try:
        seen = await store._submit(_Op(work=settings, solo=True))
        assert seen == {"statement_timeout": "1min", "lock_timeout": "2500ms",
                        "idle_in_transaction_session_timeout": "5s",
                        "application_name": "cluster-master", "tcp_keepalives_idle": "5"}
    finally:
        await store.close()
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")  # psycopg 3 all the same
    store = Store.open(plain + "?options=-c%20statement_timeout%3D7s&application_name=mine")
    try:
        seen = await store._submit(_Op(work=settings, solo=True))
        assert seen["statement_timeout"] == "7s" and seen["application_name"] == "mine"
        assert seen["lock_timeout"] == "5s"
    finally:
        await store.close()


def test_bad_credentials_and_a_missing_database_give_clear_errors(
        postgres: PostgresServer) -> None:
    wrong = postgres.url("postgres").replace(postgres.password, "not-the-password")
    with pytest.raises(StoreError, match="refused the user or password") as info:
        Store.open(wrong)
    assert "not-the-password" not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(StoreError, match="does not exist; create it"):
        Store.open(postgres.url("no_such_database"))


def test_opening_a_frozen_server_fails_clearly(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("frozen_open")
    Store.open(url).close_blocking()  # the tables exist
    own_postgres.freeze()
    try:
        with pytest.raises(StoreError, match="did not answer in time|stopped answering"):
            Store.open(url, postgres=FAST)
    finally:
        own_postgres.thaw()
    Store.open(url).close_blocking()
