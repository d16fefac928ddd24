"""Task persistence behind one writer thread, so the event loop never waits on the database.

* ``Store.open(url)`` is synchronous (start-up only) and raises ``StoreError`` saying what
  to fix. The database is a SQLite file or PostgreSQL (psycopg 3); several masters may share
  one PostgreSQL database. All database work, reads included, then runs on the store's ONE
  writer thread (``store_writer``); the async API must be called from the event-loop
  thread, and its futures resolve there.
* Writes are batched: the writer drains its queue, applies it in one transaction, commits,
  and only then resolves the batch's futures, so ``await store.save(record)`` means the
  row is durable in the database the store opened *and*, for SQLite, in the file still at
  its path: the file is checked (store_faults.FileGuard) before and after each commit, and a
  batch whose file was removed, replaced, moved or made read-only fails.
* ``create_tasks`` allocates ids and inserts the new tasks in one transaction: when it
  fails, nothing of it exists (a commit that escaped into a moved file, or whose COMMIT lost
  its connection, is deleted again by the next commit that reaches the database).
* How a batch fails: because of the database (the file as above, a lock held longer than
  ``max_lock_wait`` — shorter locks are retried with backoff —, I/O, disk full, a server
  gone, frozen or unreachable — lost connections are retried for ``reconnect_wait`` —)
  every request of it fails with ``StoreUnavailable`` and the store is *faulted*; because
  of one request's data, the batch is bisected into smaller transactions so that only that
  request fails, with ``RecordRefused``, and the others are committed.
* Faulted: ``fault()`` says why (for /health and /vars), one log line per fault and one
  when it clears; the writer probes every ``probe_interval`` seconds and clears the fault
  as soon as a write commits again. It also checks the file that often while idle, so a
  fault shows up without waiting for a write.
* Fencing: after ``claim_leadership``, a write of this store fails with ``StoreFenced`` once
  another master claimed a newer leader epoch (checked inside each write transaction), and
  nothing of it is stored. A store that never claimed is not fenced.
* ``save_progress`` is fire-and-forget and coalesced: the last value per task is written
  ``progress_interval`` seconds later or with the next batch, whichever comes first.
* ``write(fn)`` runs ``fn(session)`` inside the next batch (bulk updates, deletions);
  ``read(fn)`` runs it in a read-only transaction on a reader thread of its own (a file or
  server database: reads never wait for writes, nor writes for reads), or on the writer
  thread for an in-memory SQLite database (one connection holds it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from master import store_fencing as fencing
from master import store_schema as schema
from master import store_tasks as tasks
from master.store_batch import Op
from master.store_faults import (
    FileGuard,
    RecordRefused,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    db_message,
)
from master.store_open import (
    PgTuning,
    check_sqlite_path,
    explain,
    parse_url,
    postgres_connect_args,
    sqlite_file,
    tune_sqlite,
)
from master.store_schema import SCHEMA_VERSION, Base, MetaRow, TaskRow
from master.store_watchdog import Watchdog
from master.store_writer import Writer
from master.tasks import TaskRecord

__all__ = ["Store", "StoreError", "StoreUnavailable", "RecordRefused", "StoreFenced",
           "PgTuning", "SCHEMA_VERSION", "Base", "MetaRow", "TaskRow"]

_Op = Op  # the queue's request type, under its historical name (tests hold the writer)
_T = TypeVar("_T")
_MAX_OWNER = 1024


class Store:
    """The master's task database. Build it with ``Store.open``; finish with ``close``."""

    def __init__(
        self, engine: Engine, where: str, progress_interval: float, max_lock_wait: float,
        probe_interval: float = 1.0, *, reconnect_wait: float = 1.0,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._engine = engine
        self.url = where  #: the database, password hidden: for logs and /vars
        self.master_id = ""  #: stable id of this database, created at first open
        self._watchdog = watchdog
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_lock = threading.Lock()
        self._read_engine: Engine = engine
        self._writer = Writer(
            engine, where, progress_interval=progress_interval, max_lock_wait=max_lock_wait,
            probe_interval=probe_interval, reconnect_wait=reconnect_wait, watchdog=watchdog)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        busy_timeout: float = 5.0,
        progress_interval: float = 0.5,
        max_lock_wait: float = 30.0,
        probe_interval: float = 1.0,
        reconnect_wait: float = 1.0,
        postgres: PgTuning | None = None,
    ) -> Store:
        """Open (creating if needed) the database at ``url`` and start the writer thread.

        ``url`` is a SQLite or PostgreSQL SQLAlchemy URL (``postgresql://`` uses psycopg 3),
        or a plain path meaning a SQLite file. Every lock wait lasts ``busy_timeout``
        seconds at most (SQLite's busy timeout, PostgreSQL's ``lock_timeout``). SQLite gets
        WAL and synchronous=NORMAL; PostgreSQL ``postgres``' timeouts (``PgTuning``), TCP
        keepalives and a watchdog for a server that stops answering. Blocks until the
        tables exist and a test write has committed (masters opening one empty database at
        once take turns). A SQLite file is then watched (its identity and mode, every
        ``probe_interval`` seconds and around each commit).

        Raises:
            StoreError: the URL does not parse or names another database, its driver is
                missing, the file's directory does not exist, the database is read-only or
                locked by another process, the server cannot be reached or refuses us.
        """
        parsed = parse_url(url)
        where = parsed.render_as_string(hide_password=True)
        path = sqlite_file(parsed)
        if path is not None:
            check_sqlite_path(path)
            where = str(path)
        postgresql = parsed.get_backend_name() == "postgresql"
        tuning = postgres or PgTuning()
        options: dict[str, Any] = {}
        if postgresql:
            # No pool_pre_ping: it costs a round trip per transaction, and a pooled
            # connection found dead (the server restarted) is already replaced and the
            # transaction tried again on it, before COMMIT (store_writer); SQLAlchemy then
            # recycles the whole pool.
            options = {"connect_args": postgres_connect_args(parsed, busy_timeout, tuning)}
        try:
            engine = sa.create_engine(parsed, **options)
        except ArgumentError as exc:
            raise StoreError(f"no SQLAlchemy dialect for {where}: {exc}") from None
        except ImportError as exc:
            raise StoreError(
                f"the database driver for {where} is not installed ({exc}); "
                "install it in this environment or use a SQLite file"
            ) from None
        watchdog = None
        if postgresql:
            watchdog = Watchdog(engine, where, stall=tuning.stall,
                                probe_timeout=tuning.probe_timeout,
                                hard_limit=tuning.statement_timeout + 10.0)
        else:
            tune_sqlite(engine, busy_timeout, wal=path is not None)
        store = cls(engine, where, progress_interval, max_lock_wait, probe_interval,
                    reconnect_wait=reconnect_wait, watchdog=watchdog)
        store._writer.thread.start()
        try:
            store.master_id = store._submit_blocking(Op(work=schema.initialize, solo=True))
            if path is not None:  # the file the tables are in: watched from now on
                store._writer.watch_file(FileGuard(path))
        except BaseException as exc:
            store.close_blocking()
            if isinstance(exc, StoreError):
                raise
            raise explain(exc, where, busy_timeout) from None
        return store

    # -- async API (event-loop thread only) ----------------------------------------------

    def save(self, record: TaskRecord,
             attempts: Sequence[dict[str, Any]] = ()) -> asyncio.Future[None]:
        """Upsert the whole record as it is now, and with it `attempts` (rows of the
        ``attempts`` table, in the same transaction); the future resolves once committed.

        Supersedes any queued ``save_progress`` for the task (the record carries its
        progress). Fails with ``StoreUnavailable`` (try again later), ``RecordRefused``
        (this record cannot be stored as it is; the rest of its batch was) or
        ``StoreFenced`` (another master leads now).
        """
        snapshot = record.to_json()
        self._writer.drop_progress(record.id)
        return self._submit(Op(save=snapshot, attempts=tuple(attempts)))

    def load_attempts(self, task_id: str) -> asyncio.Future[list[dict[str, Any]]]:
        """The stored attempt rows of one task, oldest first (a read, in queue order)."""

        def work(session: Session) -> list[dict[str, Any]]:
            return tasks.load_attempts(session, [task_id]).get(task_id, [])

        return self._submit(Op(work=work, solo=True))

    def load_attempts_blocking(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """``load_attempts`` of many tasks for start-up code not yet on the loop."""

        def work(session: Session) -> dict[str, list[dict[str, Any]]]:
            return tasks.load_attempts(session, task_ids)

        try:
            result: dict[str, list[dict[str, Any]]] = self._submit_blocking(
                Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read attempts from {self.url}: {db_message(exc)}"
                             ) from None
        return result

    def create_tasks(
        self, make: Callable[[list[int]], list[TaskRecord]], n: int, sequence: str = "task"
    ) -> asyncio.Future[list[TaskRecord]]:
        """Allocate ``n`` numbers of ``sequence`` and insert ``make(numbers)``, atomically.

        The future resolves with those records once they are committed, so they are durable
        before anyone learns their ids. On failure (``StoreUnavailable``, ``RecordRefused``,
        ``StoreFenced``) neither the numbers nor the rows exist. ``make`` runs on the writer
        thread, possibly more than once (a batch retried or isolated): it must be pure.
        """
        if n < 1:
            raise ValueError(f"create_tasks needs n >= 1, got {n}")
        return self._submit(Op(numbers=(n, sequence, make)))

    def save_progress(self, task_id: str, progress: float, updated_at: float) -> None:
        """Queue a progress value for a STAGING/RUNNING task; the last one per batch wins.

        No future: a lost progress value is harmless, the next report replaces it.
        """
        self._writer.queue_progress(task_id, progress, updated_at)

    def flush(self) -> asyncio.Future[None]:
        """Resolves once everything queued before it, progress included, is committed."""
        return self._submit(Op())

    def allocate_ids(self, n: int, sequence: str = "task") -> asyncio.Future[list[int]]:
        """Reserve ``n`` consecutive numbers (1, 2, ...) of ``sequence``, durably.

        The future resolves after the new high-water mark is committed, so a restarted
        master never hands out a number twice (numbers of a failed submit are skipped), nor
        do two stores on one database.
        """
        if n < 0:
            raise ValueError(f"allocate_ids needs n >= 0, got {n}")
        return self._submit(Op(numbers=(n, sequence, None)))

    def put_meta(self, key: str, value: str) -> asyncio.Future[None]:
        """Set a small fact in the ``meta`` table (e.g. a slave's credential); durable when
        the future resolves. The ``meta`` table is never published."""
        return self._submit(Op(work=functools.partial(schema.put_meta, key=key, value=value)))

    def delete_meta(self, key: str) -> asyncio.Future[None]:
        return self._submit(Op(work=functools.partial(schema.delete_meta, key=key)))

    def load_meta_blocking(self, prefix: str) -> dict[str, str]:
        """Every ``meta`` key starting with ``prefix`` and its value (start-up code only)."""
        work = functools.partial(schema.load_meta, prefix=prefix)
        try:
            result: dict[str, str] = self._submit_blocking(Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {db_message(exc)}") from None
        return result

    def load_tasks(self) -> asyncio.Future[list[TaskRecord]]:
        """Every task, oldest submission first (for recovery at start)."""
        return self._submit(Op(work=tasks.load_tasks, solo=True))

    def load_tasks_blocking(self) -> list[TaskRecord]:
        """``load_tasks`` for start-up code that is not yet running on the loop."""
        try:
            result: list[TaskRecord] = self._submit_blocking(
                Op(work=tasks.load_tasks, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read tasks from {self.url}: {db_message(exc)}") from None
        return result

    def claim_leadership(self, owner: str) -> asyncio.Future[int]:
        """Start a leadership term: raise the database's leader epoch by one, recording
        ``owner`` (who claims: for logs and the error of whoever is fenced).

        Resolves with the new epoch once it is committed; from then on every write of this
        store checks, inside its own transaction, that the epoch is still this one, and
        fails with ``StoreFenced`` (storing nothing) once another store claimed after it.
        Claims serialize: one waits for the other's claim and for the writes that already
        passed their check. Claiming again starts a new term (after being fenced, too).
        Runs in queue order: writes queued before it are checked against the old epoch.
        Fails with ``StoreUnavailable`` when the database cannot take it (then whether the
        epoch rose is unknown: this store's old epoch, if any, may be fenced; claim again).
        """
        if not isinstance(owner, str) or not owner or len(owner) > _MAX_OWNER:
            raise ValueError(f"claim_leadership needs an owner of 1 to {_MAX_OWNER} "
                             f"characters, got {owner!r:.80}")
        work = functools.partial(fencing.claim, owner=owner)
        return self._submit(Op(work=work, solo=True, writes=True,
                               committed=self._writer.claimed))

    def write(self, work: Callable[[Session], _T]) -> asyncio.Future[_T]:
        """Run ``work(session)`` in the next write batch; resolves with its result once
        committed. ``work`` may run more than once (a batch retried or isolated): it must
        only touch the database. Fails as ``save`` does."""
        return self._submit(Op(work=work))

    def read(self, work: Callable[[Session], _T], *,
             in_order: bool = False) -> asyncio.Future[_T]:
        """Run ``work(session)`` in a read-only transaction, off the event loop; resolves
        with its result. It sees what was committed when it began; with ``in_order`` it runs
        on the writer thread, after every write queued before it (and delays the later
        ones). Fails with ``StoreError`` (the driver's message) when the database cannot
        answer."""
        self._writer.check_open()
        memory = self._writer.guard is None and self._engine.dialect.name == "sqlite"
        if in_order or memory:  # an in-memory database has one connection: the writer's
            return self._submit(Op(work=work, solo=True))
        with self._reader_lock:
            if self._reader is None:
                self._reader = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="master-store-read")
                self._read_engine = self._engine.execution_options(read_only=True)
            reader = self._reader
        return asyncio.get_running_loop().run_in_executor(reader, self._read, work)

    def read_blocking(self, work: Callable[[Session], _T]) -> _T:
        """``read`` for start-up code that is not yet running on the loop."""
        try:
            result: _T = self._submit_blocking(Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {db_message(exc)}") from None
        return result

    def _read(self, work: Callable[[Session], _T]) -> _T:
        try:
            with Session(self._read_engine) as session, session.begin():
                return work(session)
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            if isinstance(exc, StoreError):
                raise
            raise StoreUnavailable(f"cannot read {self.url}: {db_message(exc)}") from None

    @property
    def on_commit(self) -> Callable[[float], None] | None:
        """Called on the writer thread with each commit's latency (seconds)."""
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, observer: Callable[[float], None] | None) -> None:
        self._writer.on_commit = observer

    # -- health (any thread) -------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        """The leader epoch this store claimed last, or None if it never claimed."""
        return self._writer.epoch

    def fenced(self) -> str | None:
        """Why this store's writes are refused for good (another master claimed leadership
        after it), or None. Cleared by the next ``claim_leadership``."""
        return self._writer.fenced

    def fault(self) -> str | None:
        """Why the database cannot take writes now, or None when it can (as far as known).

        Fenced (``fenced()``), else the writer's last verdict, else a fresh look at the
        file (one ``stat``), so a file moved away shows at once, before the next write or
        probe. Cheap; any thread.
        """
        writer = self._writer
        fault = writer.fenced or writer.health.reason
        if fault is None and writer.guard is not None:
            fault = writer.guard.check()
        return fault

    def stats(self) -> dict[str, int | float]:
        """Counters for /vars (names without a prefix; add ``store_`` when publishing)."""
        w = self._writer
        return {
            "healthy": 0 if self.fault() else 1,
            "batches_committed": w.batches_committed,
            "batches_failed": w.batches_failed,
            "rows_written": w.rows_written,
            "lock_retries": w.lock_retries,
            "reconnects": w.reconnects,
            "progress_coalesced": w.progress_coalesced,
            "isolations": w.isolations,
            "records_refused": w.records_refused,
            "faults": w.health.faults,
            "last_commit_latency_seconds": w.last_commit_latency,
            "queue_length": len(w.ops),
            "progress_pending": len(w.progress),
            "epoch": w.epoch or 0,
            "fenced": 0 if w.fenced is None else 1,
            "writes_fenced": w.writes_fenced,
            "connections_cut": self._watchdog.cuts if self._watchdog is not None else 0,
        }

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread, dispose the engine.

        Later calls to the store raise ``StoreError``; closing twice is harmless.
        """
        self._stop_reader()
        self._writer.stop()
        await asyncio.wrap_future(self._writer.done)

    def close_blocking(self) -> None:
        """``close`` for code not running on the event loop (it blocks until done)."""
        self._stop_reader()
        self._writer.stop()
        self._writer.done.result()

    def _stop_reader(self) -> None:
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.shutdown(wait=False, cancel_futures=True)

    # -- queueing ------------------------------------------------------------------------

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        op.loop = asyncio.get_running_loop()
        op.afut = op.loop.create_future()
        self._writer.enqueue(op)
        return op.afut

    def _submit_blocking(self, op: Op) -> Any:
        op.cfut = concurrent.futures.Future()
        self._writer.enqueue(op)
        return op.cfut.result()
