"""Task persistence behind one writer thread, so the event loop never waits on the database.

* ``Store.open(url)`` is synchronous (start-up only) and raises ``StoreError`` saying what
  to fix. All database work, reads included, then runs on the store's ONE writer thread;
  the async API must be called from the event-loop thread, and its futures resolve there.
* Writes are batched: the writer drains its queue, applies it in one transaction, commits,
  and only then resolves the batch's futures, so ``await store.save(record)`` means the
  row is durable in the file the store opened *and still finds at its path*: a SQLite file
  is checked (store_faults.FileGuard) before and after each commit, and a batch whose file
  was removed, replaced, moved or made read-only fails.
* ``create_tasks`` allocates ids and inserts the new tasks in one transaction: when it
  fails, nothing of it exists (a commit that escaped into a moved file is deleted again by
  the next commit that reaches the database).
* How a batch fails: because of the database (the file as above, a lock held longer than
  ``max_lock_wait`` — shorter locks are retried with backoff —, I/O, disk full) every
  request of it fails with ``StoreUnavailable`` and the store is *faulted*; because of one
  request's data, the batch is bisected into smaller transactions so that only that request
  fails, with ``RecordRefused``, and the others are committed.
* Faulted: ``fault()`` says why (for /health and /vars), one log line per fault and one
  when it clears; the writer probes every ``probe_interval`` seconds and clears the fault
  as soon as a write commits again. It also checks the file that often while idle, so a
  fault shows up without waiting for a write.
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
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from master import store_schema as schema
from master.store_faults import (
    FileGuard,
    Health,
    RecordRefused,
    StoreError,
    StoreUnavailable,
    db_message,
    is_database_fault,
    is_transient,
)
from master.store_open import check_sqlite_path, explain, parse_url, sqlite_file, tune_sqlite
from master.store_schema import SCHEMA_VERSION, Base, MetaRow, TaskRow
from master.tasks import TaskRecord

__all__ = ["Store", "StoreError", "StoreUnavailable", "RecordRefused", "SCHEMA_VERSION",
           "Base", "MetaRow", "TaskRow"]

log = logging.getLogger("master.store")

_Work = Callable[[Session], Any]
_T = TypeVar("_T")


@dataclass
class _Op:
    """A queued request: writes are batched (saves deduplicated), ``solo`` ones run alone."""

    work: _Work | None = None
    save: dict[str, Any] | None = None
    # (n, sequence, make): allocate n numbers; with make, insert make(numbers) as new tasks
    numbers: tuple[int, str, Callable[[list[int]], list[TaskRecord]] | None] | None = None
    solo: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    afut: asyncio.Future[Any] | None = None
    cfut: concurrent.futures.Future[Any] | None = None


class _FileFault(StoreUnavailable):
    """The file check failed; ``committed`` holds the results if the commit had happened."""

    def __init__(self, reason: str, committed: list[Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.committed = committed


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if not fut.done():  # done = the caller cancelled it
            fut.set_exception(exc) if exc is not None else fut.set_result(value)


def _unavailable_cause(exc: BaseException) -> bool:
    return isinstance(exc, _FileFault) or is_transient(exc) or is_database_fault(exc)


class Store:
    """The master's task database. Build it with ``Store.open``; finish with ``close``."""

    def __init__(
        self, engine: Engine, where: str, progress_interval: float, max_lock_wait: float,
        probe_interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self.url = where  #: the database, password hidden: for logs and /vars
        self.master_id = ""  #: stable id of this database, created at first open
        self._progress_interval = progress_interval
        self._max_lock_wait = max_lock_wait
        self._probe_interval = probe_interval
        self._guard: FileGuard | None = None
        self._cond = threading.Condition()
        self._ops: list[_Op] = []
        self._progress: dict[str, tuple[float, float]] = {}
        self._progress_due = 0.0
        self._next_probe = math.inf
        self._closing = False
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Written by the writer thread only:
        self._health = Health(where)
        self._orphans: list[str] = []  # created tasks whose commit escaped into a moved file
        self.batches_committed = 0
        self.batches_failed = 0
        self.rows_written = 0
        self.lock_retries = 0
        self.progress_coalesced = 0
        self.isolations = 0
        self.records_refused = 0
        self.last_commit_latency = 0.0
        #: Called on the writer thread with each committed batch's latency (seconds).
        self.on_commit: Callable[[float], None] | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_engine: Engine = engine
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
        probe_interval: float = 1.0,
    ) -> Store:
        """Open (creating if needed) the database at ``url`` and start the writer thread.

        ``url`` is any SQLAlchemy URL, or a plain path meaning a SQLite file. SQLite gets
        WAL, synchronous=NORMAL and a ``busy_timeout`` (seconds) lock wait. Blocks until
        the tables exist and a test write has committed. A SQLite file is then watched
        (its identity and mode, every ``probe_interval`` seconds and around each commit).

        Raises:
            StoreError: the URL does not parse, its driver is missing, the file's directory
                does not exist, the database is read-only or locked by another process.
        """
        parsed = parse_url(url)
        where = parsed.render_as_string(hide_password=True)
        path = sqlite_file(parsed)
        if path is not None:
            check_sqlite_path(path)
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
            tune_sqlite(engine, busy_timeout, wal=path is not None)
        store = cls(engine, where, progress_interval, max_lock_wait, probe_interval)
        store._thread.start()
        try:
            store.master_id = store._submit_blocking(_Op(work=schema.initialize, solo=True))
            if path is not None:  # the file the tables are in: watched from now on
                guard = FileGuard(path)
                with store._cond:
                    store._guard = guard
                    store._next_probe = time.monotonic() + probe_interval
                    store._cond.notify()
        except BaseException as exc:
            store.close_blocking()
            if isinstance(exc, StoreError):
                raise
            raise explain(exc, where, busy_timeout) from None
        return store

    # -- async API (event-loop thread only) ----------------------------------------------

    def save(self, record: TaskRecord) -> asyncio.Future[None]:
        """Upsert the whole record as it is now; the future resolves once it is committed.

        Supersedes any queued ``save_progress`` for the task (the record carries its
        progress). Fails with ``StoreUnavailable`` (try again later) or ``RecordRefused``
        (this record cannot be stored as it is; the rest of its batch was).
        """
        snapshot = record.to_json()
        with self._cond:
            self._check_open()
            self._progress.pop(record.id, None)
        return self._submit(_Op(save=snapshot))

    def create_tasks(
        self, make: Callable[[list[int]], list[TaskRecord]], n: int, sequence: str = "task"
    ) -> asyncio.Future[list[TaskRecord]]:
        """Allocate ``n`` numbers of ``sequence`` and insert ``make(numbers)``, atomically.

        The future resolves with those records once they are committed, so they are durable
        before anyone learns their ids. On failure (``StoreUnavailable``, ``RecordRefused``)
        neither the numbers nor the rows exist. ``make`` runs on the writer thread, possibly
        more than once (a batch retried or isolated): it must be pure.
        """
        if n < 1:
            raise ValueError(f"create_tasks needs n >= 1, got {n}")
        return self._submit(_Op(numbers=(n, sequence, make)))

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
        return self._submit(_Op(numbers=(n, sequence, None)))

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

    def write(self, work: Callable[[Session], _T]) -> asyncio.Future[_T]:
        """Run ``work(session)`` in the next write batch; resolves with its result once
        committed. ``work`` may run more than once (a batch retried or isolated): it must
        only touch the database. Fails as ``save`` does."""
        return self._submit(_Op(work=work))

    def read(self, work: Callable[[Session], _T], *,
             in_order: bool = False) -> asyncio.Future[_T]:
        """Run ``work(session)`` in a read-only transaction, off the event loop; resolves
        with its result. It sees what was committed when it began; with ``in_order`` it runs
        on the writer thread, after every write queued before it (and delays the later
        ones). Fails with ``StoreError`` (the driver's message) when the database cannot
        answer."""
        with self._cond:
            self._check_open()
            if in_order or (self._guard is None and self._engine.dialect.name == "sqlite"):
                return self._submit(_Op(work=work, solo=True))  # in memory: one connection
            if self._reader is None:
                self._reader = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="master-store-read")
                self._read_engine = self._engine.execution_options(read_only=True)
            reader = self._reader
        return asyncio.get_running_loop().run_in_executor(reader, self._read, work)

    def read_blocking(self, work: Callable[[Session], _T]) -> _T:
        """``read`` for start-up code that is not yet running on the loop."""
        try:
            result: _T = self._submit_blocking(_Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {db_message(exc)}") from None
        return result

    def _read(self, work: Callable[[Session], _T]) -> _T:
        try:
            with Session(self._read_engine) as session, session.begin():
                return work(session)
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {db_message(exc)}") from None

    def load_meta_blocking(self, prefix: str) -> dict[str, str]:
        """Every ``meta`` key starting with ``prefix`` and its value (start-up code only)."""

        def work(session: Session) -> dict[str, str]:
            wanted = MetaRow.key.startswith(prefix, autoescape=True)
            rows = session.scalars(sa.select(MetaRow).where(wanted))
            return {row.key: row.value for row in rows}

        try:
            result: dict[str, str] = self._submit_blocking(_Op(work=work, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read {self.url}: {db_message(exc)}") from None
        return result

    def load_tasks(self) -> asyncio.Future[list[TaskRecord]]:
        """Every task, oldest submission first (for recovery at start)."""
        return self._submit(_Op(work=schema.load_tasks, solo=True))

    def load_tasks_blocking(self) -> list[TaskRecord]:
        """``load_tasks`` for start-up code that is not yet running on the loop."""
        try:
            result: list[TaskRecord] = self._submit_blocking(
                _Op(work=schema.load_tasks, solo=True))
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError
            raise StoreError(f"cannot read tasks from {self.url}: {db_message(exc)}") from None
        return result

    # -- health (any thread) -------------------------------------------------------------

    def fault(self) -> str | None:
        """Why the database cannot take writes now, or None when it can (as far as known).

        The writer's last verdict, or else a fresh look at the file (one ``stat``), so a
        file moved away shows at once, before the next write or probe. Cheap; any thread.
        """
        fault = self._health.reason
        if fault is None and self._guard is not None:
            fault = self._guard.check()
        return fault

    def stats(self) -> dict[str, int | float]:
        """Counters for /vars (names without a prefix; add ``store_`` when publishing)."""
        return {
            "healthy": 0 if self.fault() else 1,
            "batches_committed": self.batches_committed,
            "batches_failed": self.batches_failed,
            "rows_written": self.rows_written,
            "lock_retries": self.lock_retries,
            "progress_coalesced": self.progress_coalesced,
            "isolations": self.isolations,
            "records_refused": self.records_refused,
            "faults": self._health.faults,
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
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)

    def close_blocking(self) -> None:
        """``close`` for code not running on the event loop (it blocks until done)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._done.result()
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)

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
                        now = time.monotonic()
                        if self._progress and now >= self._progress_due:
                            break
                        if now >= self._next_probe:
                            break
                        due = min(self._next_probe,
                                  self._progress_due if self._progress else math.inf)
                        self._cond.wait(None if due == math.inf else due - now)
                    ops, self._ops = self._ops, []
                    progress: dict[str, tuple[float, float]] = {}
                    if ops or self._closing or time.monotonic() >= self._progress_due:
                        progress, self._progress = self._progress, {}  # else: a probe
                    last = self._closing and not ops and not progress
                if last:
                    return
                if ops or progress:
                    self._process(ops, progress)
                else:
                    self._probe()
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
            log.error("database request failed on %s: %s", self.url, db_message(exc))
            self._resolve([op], [], StoreError(db_message(exc)))
            return
        self._resolve([op], [result], None)

    def _write(self, ops: list[_Op], progress: dict[str, tuple[float, float]]) -> None:
        try:
            results, rows = self._commit(ops, progress)
        except Exception as exc:  # noqa: BLE001 - reported through the futures
            if _unavailable_cause(exc):
                self._fail_unavailable(ops, exc)
                if progress:
                    log.debug("dropped %d progress values: the database is unavailable",
                              len(progress))
                return
            if not ops:
                log.error("dropped %d progress values: %s", len(progress), db_message(exc))
                return
            self.isolations += 1
            self._isolate(ops)
            if progress:  # in a savepoint, so not what failed: write it on its own
                self._write([], progress)
            return
        self._committed(ops, results, rows)

    def _commit(
        self, ops: list[_Op], progress: dict[str, tuple[float, float]]
    ) -> tuple[list[Any], int]:
        """One transaction for ``ops``; lock waits are retried. Raises what failed it:
        ``_FileFault`` when the file was not ours before the commit (rolled back) or is not
        any more after it (``committed`` set: it went where no master will look)."""
        delay, deadline = 0.01, time.monotonic() + self._max_lock_wait
        while True:
            start = time.monotonic()
            try:
                self._check_file()
                orphans = list(self._orphans)
                with Session(self._engine) as session, session.begin():
                    if orphans:
                        schema.delete(session, orphans)
                    results, rows = self._apply(session, ops, progress)
                    self._check_file()  # still ours: commit; else roll back
                break
            except Exception as exc:
                if is_transient(exc) and time.monotonic() + delay < deadline:
                    self.lock_retries += 1
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise
        reason = self._guard.check() if self._guard is not None else None
        if reason is not None:
            raise _FileFault(reason, committed=results)
        if orphans:
            log.warning("deleted %d task(s) whose submit had failed but whose rows had "
                        "reached a moved database file: %s", len(orphans), ", ".join(orphans))
            self._orphans = self._orphans[len(orphans):]
        self.last_commit_latency = time.monotonic() - start
        if self.on_commit is not None:
            try:
                self.on_commit(self.last_commit_latency)
            except Exception:  # noqa: BLE001 - an observer must not fail a committed batch
                log.exception("store commit observer failed")
        return results, rows

    def _check_file(self) -> None:
        reason = self._guard.check() if self._guard is not None else None
        if reason is not None:
            raise _FileFault(reason)

    def _isolate(self, ops: list[_Op]) -> None:
        """Commit what can be of a batch that failed on some request's data: bisect it, so
        k bad requests among n cost about 2k·log2(n) small transactions, and refuse each bad
        one alone. A database fault on the way fails the rest as unavailable."""
        stack = [ops]
        while stack:
            group = stack.pop()
            try:
                results, rows = self._commit(group, {})
            except Exception as exc:  # noqa: BLE001 - reported through the futures
                if _unavailable_cause(exc):
                    # `group` first: a commit that escaped lines up with its ops.
                    self._fail_unavailable(group + [op for g in stack for op in g], exc)
                    return
                if len(group) == 1:
                    self._refuse(group[0], exc)
                else:
                    mid = len(group) // 2
                    stack += [group[mid:], group[:mid]]  # left half first
                continue
            self._committed(group, results, rows)

    def _apply(
        self, session: Session, ops: list[_Op], progress: dict[str, tuple[float, float]]
    ) -> tuple[list[Any], int]:
        results: list[Any] = []
        saves: dict[str, dict[str, Any]] = {}
        last: dict[str, int] = {}  # sequence -> last number handed out in this transaction
        new: list[dict[str, Any]] = []
        for op in ops:
            result: Any = None
            if op.save is not None:
                saves[op.save["id"]] = op.save
            elif op.numbers is not None:  # one read and one write per sequence and batch
                n, sequence, make = op.numbers
                first = last[sequence] if sequence in last else schema.last_number(
                    session, sequence)
                last[sequence] = first + n
                result = list(range(first + 1, first + n + 1))
                if make is not None:
                    result = make(result)
                    new += [r.to_json() for r in result]
            elif op.work is not None:
                result = op.work(session)
            results.append(result)
        for sequence, number in last.items():
            schema.set_last_number(session, sequence, number)
        schema.insert_new(session, new)
        rows = len(new) + (schema.upsert(session, list(saves.values())) if saves else 0)
        if progress:
            try:
                # A savepoint: progress is best effort and must never sink the batch's saves.
                with session.begin_nested():
                    rows += schema.update_progress(session, progress)
            except Exception as exc:  # noqa: BLE001
                if _unavailable_cause(exc):
                    raise
                log.error("dropped %d progress values: %s", len(progress), db_message(exc))
        return results, rows

    def _committed(self, ops: list[_Op], results: list[Any], rows: int) -> None:
        self.batches_committed += 1
        self.rows_written += rows
        self._fault_cleared()
        self._resolve(ops, results, None)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, _FileFault):
            return exc.reason
        what = "stayed locked" if is_transient(exc) else "failed"
        return f"database write {what} on {self.url}: {db_message(exc)}"

    def _fail_unavailable(self, ops: list[_Op], exc: BaseException) -> None:
        reason = self._describe(exc)
        self.batches_failed += 1
        if isinstance(exc, _FileFault) and exc.committed is not None:
            for op, result in zip(ops, exc.committed, strict=False):
                if op.numbers is not None and op.numbers[2] is not None:
                    self._orphans += [r.id for r in result]
        self._fault_seen(reason)
        log.debug("%d requests failed: %s", len(ops), reason)
        self._resolve(ops, [], StoreUnavailable(reason))

    def _refuse(self, op: _Op, exc: BaseException) -> None:
        self.records_refused += 1
        what = f"task {op.save['id']}" if op.save is not None else "a request"
        msg = (f"database write failed on {self.url}: the database refuses {what} "
               f"({db_message(exc)}); nothing of it was stored, and the same data would "
               "fail again")
        log.warning("%s", msg)
        self._resolve([op], [], RecordRefused(msg))

    def _fault_seen(self, reason: str) -> None:
        self._health.fault(reason)
        self._next_probe = min(self._next_probe, time.monotonic() + self._probe_interval)

    def _fault_cleared(self) -> None:
        if self._health.clear() and self._guard is None:
            self._next_probe = math.inf

    def _probe(self) -> None:
        """Idle: look at the file; while faulted, try a tiny write to see if it cleared."""
        now = time.monotonic()
        self._next_probe = now + self._probe_interval if (
            self._guard is not None or self._health.reason is not None) else math.inf
        reason = self._guard.check() if self._guard is not None else None
        if reason is not None:
            self._fault_seen(reason)
            return
        if self._health.reason is None:
            return
        try:
            self._commit([_Op(work=schema.probe)], {})
        except Exception as exc:  # noqa: BLE001 - still faulted
            self._fault_seen(self._describe(exc))
            return
        self._fault_cleared()

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

