"""Task persistence behind one writer thread, so the event loop never waits on the database.

* ``Store.open(url)`` is synchronous (start-up only) and raises ``StoreError`` saying what
  to fix. All database work, reads included, then runs on the store's ONE writer thread;
  the async API must be called from the event-loop thread, and its futures resolve there.
* Writes are batched: the writer drains its queue, applies it in one transaction, commits,
  and only then resolves the batch's futures, so ``await store.save(record)`` means the
  row is durable: the master acknowledges a terminal status update only after that.
* ``save_progress`` is fire-and-forget and coalesced: the last value per task is written
  ``progress_interval`` seconds later or with the next batch, whichever comes first.
* "database is locked" is retried with backoff for up to ``max_lock_wait`` seconds; then,
  or at once for any other error, the batch's futures fail with ``StoreError`` (logged).
  The writer keeps serving later batches either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from master.tasks import ACTIVE_STATES, TaskRecord

log = logging.getLogger("master.store")

SCHEMA_VERSION = "1"


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    """One task; the columns are exactly ``TaskRecord``'s fields."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    command: Mapped[str] = mapped_column(sa.Text)
    cpus: Mapped[float] = mapped_column(sa.Float)
    mem: Mapped[float] = mapped_column(sa.Float)
    timeout: Mapped[float | None] = mapped_column(sa.Float)
    retries: Mapped[int] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    progress: Mapped[float] = mapped_column(sa.Float)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    message: Mapped[str] = mapped_column(sa.Text)
    slave_id: Mapped[str | None] = mapped_column(sa.String(255))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    submitted_at: Mapped[float | None] = mapped_column(sa.Float)
    started_at: Mapped[float | None] = mapped_column(sa.Float)
    finished_at: Mapped[float | None] = mapped_column(sa.Float)
    updated_at: Mapped[float | None] = mapped_column(sa.Float)


class MetaRow(Base):
    """Small facts: schema_version, master_id, opened_at, ``seq.<name>`` counters (last used)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)


_Work = Callable[[Session], Any]


@dataclass
class _Op:
    """A queued request: writes are batched (saves deduplicated), ``solo`` ones run alone."""

    work: _Work | None = None
    save: dict[str, Any] | None = None
    solo: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    afut: asyncio.Future[Any] | None = None
    cfut: concurrent.futures.Future[Any] | None = None


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if not fut.done():  # done = the caller cancelled it
            fut.set_exception(exc) if exc is not None else fut.set_result(value)


def _db_message(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc)


def _is_transient(exc: BaseException) -> bool:
    """A lock held by someone else, or a serialization conflict: worth trying again."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return "is locked" in _db_message(exc) or code in ("40001", "40P01")


def _parse(url: str) -> URL:
    """An SQLAlchemy URL, or a plain file path meaning a SQLite file."""
    if "://" not in url:
        return URL.create("sqlite", database=url)
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"cannot parse database URL {url!r} ({exc}); use a file path such as "
            "./master.db, or a URL such as sqlite:////var/lib/cluster/master.db"
        ) from None


def _sqlite_file(url: URL) -> Path | None:
    """The file of a plain SQLite URL; None for memory, ``file:`` URIs and other databases."""
    db = url.database if url.get_backend_name() == "sqlite" else None
    return Path(db).absolute() if db and db != ":memory:" and not db.startswith("file:") else None


def _check_sqlite_path(path: Path) -> None:
    """Catch the common mistakes before SQLite reports only 'unable to open database file'."""
    if path.is_dir():
        raise StoreError(
            f"database path {path} is a directory; give a file such as {path / 'master.db'}"
        )
    parent = path.parent
    if parent.is_dir():
        return
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(
            f"cannot create database {path}: {ancestor} is a file, not a directory; "
            "choose a --db path inside a directory"
        )
    raise StoreError(
        f"cannot create database {path}: directory {parent} does not exist; "
        f"create it (mkdir -p {parent}) or choose another --db"
    )


def _explain(exc: BaseException, where: str, busy_timeout: float) -> StoreError:
    """Turn a driver error at open into what the user should do about it."""
    text = _db_message(exc)
    if _is_transient(exc):
        return StoreError(
            f"database {where} is locked by another process (waited {busy_timeout:g} s); "
            "is another master running with the same --db? Stop it or choose another --db"
        )
    for needle, advice in _OPEN_ADVICE.items():
        if needle in text.lower():
            return StoreError(advice.format(where=where))
    return StoreError(f"cannot use database {where}: {text}")


_OPEN_ADVICE = {
    "readonly": "database {where} is read-only; the master must write to it: fix the "
    "permissions of the file and its directory, or choose another --db",
    "unable to open database file": "cannot open database {where}: SQLite could not open "
    "or create the file; check that its directory exists and is writable by this user",
    "not a database": "{where} is not a SQLite database; choose another --db",
}


class Store:
    """The master's task database. Build it with ``Store.open``; finish with ``close``."""

    def __init__(
        self, engine: Engine, where: str, progress_interval: float, max_lock_wait: float
    ) -> None:
        self._engine = engine
        self.url = where  #: the database, password hidden: for logs and /vars
        self.master_id = ""  #: stable id of this database, created at first open
        self._progress_interval = progress_interval
        self._max_lock_wait = max_lock_wait
        self._cond = threading.Condition()
        self._ops: list[_Op] = []
        self._progress: dict[str, tuple[float, float]] = {}
        self._progress_due = 0.0
        self._closing = False
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.batches_committed = 0
        self.batches_failed = 0
        self.rows_written = 0
        self.lock_retries = 0
        self.progress_coalesced = 0
        self.last_commit_latency = 0.0
        self._thread = threading.Thread(target=self._run, name="master-store", daemon=True)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        busy_timeout: float = 5.0,
        progress_interval: float = 0.5,
        max_lock_wait: float = 30.0,
    ) -> Store:
        """Open (creating if needed) the database at ``url`` and start the writer thread.

        ``url`` is any SQLAlchemy URL, or a plain path meaning a SQLite file. SQLite gets
        WAL, synchronous=NORMAL and a ``busy_timeout`` (seconds) lock wait. Blocks until
        the tables exist and a test write has committed.

        Raises:
            StoreError: the URL does not parse, its driver is missing, the file's directory
                does not exist, the database is read-only or locked by another process.
        """
        parsed = _parse(url)
        where = parsed.render_as_string(hide_password=True)
        path = _sqlite_file(parsed)
        if path is not None:
            _check_sqlite_path(path)
            where = str(path)
        try:
            engine = sa.create_engine(parsed)
        except ArgumentError as exc:
            raise StoreError(f"no SQLAlchemy dialect for {where}: {exc}") from None
        except ImportError as exc:
            raise StoreError(
                f"the database driver for {where} is not installed ({exc}); "
                "install it in this environment or use a SQLite file"
            ) from None
        if parsed.get_backend_name() == "sqlite":
            _tune_sqlite(engine, busy_timeout, wal=path is not None)
        store = cls(engine, where, progress_interval, max_lock_wait)
        store._thread.start()
        try:
            store.master_id = store._submit_blocking(_Op(work=_initialize, solo=True))
        except BaseException as exc:
            store.close_blocking()
            if isinstance(exc, StoreError):
                raise
            raise _explain(exc, where, busy_timeout) from None
        return store

    # -- async API (event-loop thread only) ----------------------------------------------

    def save(self, record: TaskRecord) -> asyncio.Future[None]:
        """Upsert the whole record as it is now; the future resolves once it is committed.

        Supersedes any queued ``save_progress`` for the task (the record carries its
        progress). Fails with ``StoreError`` if the batch cannot be committed.
        """
        snapshot = record.to_json()
        with self._cond:
            self._check_open()
            self._progress.pop(record.id, None)
        return self._submit(_Op(save=snapshot))

    def save_progress(self, task_id: str, progress: float, updated_at: float) -> None:
        """Queue a progress value for a STAGING/RUNNING task; the last one per batch wins.

        No future: a lost progress value is harmless, the next report replaces it.
        """
        with self._cond:
            self._check_open()
            if task_id in self._progress:
                self.progress_coalesced += 1
            elif not self._progress:
                self._progress_due = time.monotonic() + self._progress_interval
                self._cond.notify()
            self._progress[task_id] = (progress, updated_at)

    def flush(self) -> asyncio.Future[None]:
        """Resolves once everything queued before it, progress included, is committed."""
        return self._submit(_Op())

    def allocate_ids(self, n: int, sequence: str = "task") -> asyncio.Future[list[int]]:
        """Reserve ``n`` consecutive numbers (1, 2, ...) of ``sequence``, durably.

        The future resolves after the new high-water mark is committed, so a restarted
        master never hands out a number twice (numbers of a failed submit are skipped).
        """
        if n < 0:
            raise ValueError(f"allocate_ids needs n >= 0, got {n}")

        def work(session: Session) -> list[int]:
            key = f"seq.{sequence}"
            row = session.get(MetaRow, key)
            last = 0 if row is None else int(row.value)
            session.merge(MetaRow(key=key, value=str(last + n)))
            return list(range(last + 1, last + n + 1))

        return self._submit(_Op(work=work))

    def put_meta(self, key: str, value: str) -> asyncio.Future[None]:
        """Set a small fact in the ``meta`` table (e.g. a slave's credential); durable when
        the future resolves. The ``meta`` table is never published."""

        def work(session: Session) -> None:
            session.merge(MetaRow(key=key, value=value))

        return self._submit(_Op(work=work))

    def delete_meta(self, key: str) -> asyncio.Future[None]:
        def work(session: Session) -> None:
            row = session.get(MetaRow, key)
            if row is not None:
                session.delete(row)

        return self._submit(_Op(work=work))

    def load_meta_blocking(self, prefix: str) -> dict[str, str]:
        """Every ``meta`` key starting with ``prefix`` and its value (start-up code only)."""

        def work(session: Session) -> dict[str, str]:
            wanted = MetaRow.key.startswith(prefix, autoescape=True)
            rows = session.scalars(sa.select(MetaRow).where(wanted))
            return {row.key: row.value for row in rows}

        try:
            result: dict[str, str] = self._submit_blocking(_Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {_db_message(exc)}") from None
        return result

    def load_tasks(self) -> asyncio.Future[list[TaskRecord]]:
        """Every task, oldest submission first (for recovery at start)."""
        return self._submit(_Op(work=_load_tasks, solo=True))

    def load_tasks_blocking(self) -> list[TaskRecord]:
        """``load_tasks`` for start-up code that is not yet running on the loop."""
        try:
            result: list[TaskRecord] = self._submit_blocking(_Op(work=_load_tasks, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read tasks from {self.url}: {_db_message(exc)}") from None
        return result

    def stats(self) -> dict[str, int | float]:
        """Counters for /vars (names without a prefix; add ``store_`` when publishing)."""
        return {
            "batches_committed": self.batches_committed,
            "batches_failed": self.batches_failed,
            "rows_written": self.rows_written,
            "lock_retries": self.lock_retries,
            "progress_coalesced": self.progress_coalesced,
            "last_commit_latency_seconds": self.last_commit_latency,
            "queue_length": len(self._ops),
            "progress_pending": len(self._progress),
        }

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread, dispose the engine.

        Later calls to the store raise ``StoreError``; closing twice is harmless.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.wrap_future(self._done)

    def close_blocking(self) -> None:
        """``close`` for code not running on the event loop (it blocks until done)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._done.result()

    # -- queueing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise StoreError(f"store {self.url} is closed; no more writes are accepted")

    def _submit(self, op: _Op) -> asyncio.Future[Any]:
        op.loop = asyncio.get_running_loop()
        op.afut = op.loop.create_future()
        self._enqueue(op)
        return op.afut

    def _submit_blocking(self, op: _Op) -> Any:
        op.cfut = concurrent.futures.Future()
        self._enqueue(op)
        return op.cfut.result()

    def _enqueue(self, op: _Op) -> None:
        with self._cond:
            self._check_open()
            self._ops.append(op)
            self._cond.notify()

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._ops or self._closing):
                        if self._progress and time.monotonic() >= self._progress_due:
                            break
                        wait = self._progress_due - time.monotonic() if self._progress else None
                        self._cond.wait(wait)
                    ops, self._ops = self._ops, []
                    progress, self._progress = self._progress, {}
                    last = self._closing and not ops and not progress
                if last:
                    return
                self._process(ops, progress)
        except BaseException as exc:  # a bug: fail what is queued rather than hang its callers
            log.exception("store writer thread crashed")
            with self._cond:
                self._closing, ops, self._ops = True, self._ops, []
            self._resolve(ops, [], StoreError(f"store {self.url} writer crashed: {exc}"))
        finally:
            try:
                self._engine.dispose()
            finally:
                self._done.set_result(None)

    def _process(self, ops: list[_Op], progress: dict[str, tuple[float, float]]) -> None:
        """Consecutive writes share one transaction; solo ops (reads, init) run alone, in order."""
        batch: list[_Op] = []
        for op in ops:
            if op.solo:
                if batch or progress:
                    self._write(batch, progress)
                    batch, progress = [], {}
                self._solo(op)
            else:
                batch.append(op)
        if batch or progress:
            self._write(batch, progress)

    def _solo(self, op: _Op) -> None:
        try:
            with Session(self._engine) as session, session.begin():
                result = op.work(session) if op.work else None
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            if op.cfut is not None:  # a blocking caller (open): it explains the error itself
                self._resolve([op], [], exc)
                return
            log.error("database request failed on %s: %s", self.url, _db_message(exc))
            self._resolve([op], [], StoreError(_db_message(exc)))
            return
        self._resolve([op], [result], None)

    def _write(self, ops: list[_Op], progress: dict[str, tuple[float, float]]) -> None:
        delay, deadline = 0.01, time.monotonic() + self._max_lock_wait
        while True:
            start = time.monotonic()
            try:
                with Session(self._engine) as session, session.begin():
                    results, rows = self._apply(session, ops, progress)
                break
            except Exception as exc:  # noqa: BLE001 - reported through the futures
                if _is_transient(exc) and time.monotonic() + delay < deadline:
                    self.lock_retries += 1
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                self.batches_failed += 1
                what = "stayed locked" if _is_transient(exc) else "failed"
                msg = f"database write {what} on {self.url}: {_db_message(exc)}"
                log.error("%s (%d requests, %d progress values lost)", msg, len(ops), len(progress))
                self._resolve(ops, [], StoreError(msg))
                return
        self.last_commit_latency = time.monotonic() - start
        self.batches_committed += 1
        self.rows_written += rows
        self._resolve(ops, results, None)

    def _apply(
        self, session: Session, ops: list[_Op], progress: dict[str, tuple[float, float]]
    ) -> tuple[list[Any], int]:
        results: list[Any] = []
        saves: dict[str, dict[str, Any]] = {}
        for op in ops:
            if op.save is not None:
                saves[op.save["id"]] = op.save
            results.append(op.work(session) if op.work else None)
        rows = _upsert(session, list(saves.values())) if saves else 0
        if progress:
            table = Base.metadata.tables["tasks"]
            # Literal states, not an expanding IN: executemany() cannot expand parameters.
            active = sa.or_(*[table.c.state == sa.literal_column(f"'{s}'")
                              for s in sorted(ACTIVE_STATES)])
            stmt = (
                sa.update(table)
                .where(table.c.id == sa.bindparam("b_id"), active)
                .values(progress=sa.bindparam("b_progress"), updated_at=sa.bindparam("b_updated"))
            )
            params = [
                {"b_id": k, "b_progress": p, "b_updated": t} for k, (p, t) in progress.items()
            ]
            try:
                # A savepoint: progress is best effort and must never sink the batch's saves.
                with session.begin_nested():
                    count = session.execute(stmt, params).rowcount  # type: ignore[attr-defined]
                rows += count if count >= 0 else len(params)
            except Exception as exc:  # noqa: BLE001
                if _is_transient(exc):
                    raise
                log.error("dropped %d progress values: %s", len(params), _db_message(exc))
        return results, rows

    def _resolve(self, ops: list[_Op], results: list[Any], exc: BaseException | None) -> None:
        """Settle each op's future; one ``call_soon_threadsafe`` per loop, not per future."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for i, op in enumerate(ops):
            value = results[i] if exc is None else None
            if op.cfut is not None:
                op.cfut.set_exception(exc) if exc is not None else op.cfut.set_result(value)
            elif op.loop is not None and op.afut is not None:
                by_loop.setdefault(op.loop, []).append((op.afut, value, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _tune_sqlite(engine: Engine, busy_timeout: float, *, wal: bool) -> None:
    """WAL + NORMAL sync, a lock wait, and BEGIN IMMEDIATE so lock conflicts show at BEGIN."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy's recipe)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if wal:
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode and str(mode[0]).lower() != "wal":
                log.warning("SQLite refused WAL (journal_mode=%s); writes will be slower", mode[0])
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _initialize(session: Session) -> str:
    """Create the tables, check the schema version, write (proving we can), return master_id."""
    Base.metadata.create_all(session.connection())
    version = session.get(MetaRow, "schema_version")
    if version is not None and version.value != SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version.value} is not the {SCHEMA_VERSION} this master "
            "understands; use the matching master version or another --db"
        )
    session.merge(MetaRow(key="schema_version", value=SCHEMA_VERSION))
    session.merge(MetaRow(key="opened_at", value=repr(time.time())))  # proves we can write
    master = session.get(MetaRow, "master_id")
    if master is None:
        master = MetaRow(key="master_id", value=uuid.uuid4().hex)
        session.add(master)
    return master.value


def _load_tasks(session: Session) -> list[TaskRecord]:
    table = Base.metadata.tables["tasks"]
    stmt = sa.select(table).order_by(table.c.submitted_at, sa.func.length(table.c.id), table.c.id)
    return [TaskRecord.from_json(dict(row)) for row in session.execute(stmt).mappings()]


def _upsert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert new ids, update known ones: portable (no dialect-specific ON CONFLICT)."""
    ids = [r["id"] for r in rows]
    known: set[str] = set()
    for i in range(0, len(ids), 500):
        known.update(session.scalars(sa.select(TaskRow.id).where(TaskRow.id.in_(ids[i : i + 500]))))
    new = [r for r in rows if r["id"] not in known]
    old = [r for r in rows if r["id"] in known]
    if new:
        session.execute(sa.insert(TaskRow), new)
    if old:
        session.execute(sa.update(TaskRow), old)
    return len(rows)
