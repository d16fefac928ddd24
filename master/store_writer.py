"""The store's one writer thread: its queue, its transactions, and what it does on failure.

* The queue (``enqueue``, ``queue_progress``) may be fed from any thread. The thread drains
  it; consecutive writes share one transaction (``store_batch.apply``), solo requests (reads,
  the schema, a leadership claim) run alone, all in arrival order.
* A transaction is tried again when it met someone else's lock or a conflict (with backoff,
  up to ``max_lock_wait`` seconds) or lost its connection before COMMIT was sent (up to
  ``reconnect_wait``). A connection lost *during* COMMIT leaves the outcome unknown: the
  batch fails, and the ids of tasks it created are deleted by the next commit that reaches
  the database (so nobody is told of a task that may exist, and none that was never told
  of survives). Every request runs under the PostgreSQL ``Watchdog``, if any.
* A batch failing because of the database fails whole with ``StoreUnavailable`` and faults
  the store (``health``): one log line per fault, one when it clears; probes every
  ``probe_interval`` seconds clear it. While the server cannot even be reached, writes fail
  at once instead of waiting for a connection each, until a probe gets through. A batch
  failing because of one request's data is bisected so only that request fails
  (``RecordRefused``).
* Fencing: once ``claimed(epoch)``, every write transaction first checks the database's
  epoch (``store_fencing``); when another master claimed a newer one, that batch and every
  later write fail with ``StoreFenced`` — never retried, never isolated — until a new claim.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from master import store_fencing as fencing
from master import store_schema as schema
from master import store_tasks as tasks
from master.store_batch import Fault, Op, apply, resolve, unavailable_cause
from master.store_faults import (
    FileGuard,
    Health,
    RecordRefused,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    db_message,
    is_disconnect,
    is_transient,
)
from master.store_watchdog import Watchdog

log = logging.getLogger("master.store")

Progress = dict[str, tuple[float, float]]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


class Writer:
    """The thread behind one ``Store``; see the module docstring. Its counters and state are
    written by the thread only and read by ``Store.stats`` from any thread."""

    def __init__(self, engine: Engine, where: str, *, progress_interval: float,
                 max_lock_wait: float, probe_interval: float, reconnect_wait: float,
                 watchdog: Watchdog | None) -> None:
        self.engine = engine
        self.where = where
        self.progress_interval = progress_interval
        self.max_lock_wait = max_lock_wait
        self.probe_interval = probe_interval
        self.reconnect_wait = reconnect_wait
        self.watchdog = watchdog
        self.guard: FileGuard | None = None
        self.cond = threading.Condition()
        self.ops: list[Op] = []
        self.progress: Progress = {}
        self.progress_due = 0.0
        self.next_probe = math.inf
        self.closing = False
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.health = Health(where)
        self.offline = False  # the fault is a server out of reach: fail writes at once
        self.orphans: list[str] = []  # created tasks whose commit may have escaped
        self.epoch: int | None = None  # the leader epoch this store claimed, if any
        self.fenced: str | None = None  # why writes are refused: another master claimed
        self.batches_committed = 0
        self.batches_failed = 0
        self.rows_written = 0
        self.lock_retries = 0
        self.reconnects = 0
        self.progress_coalesced = 0
        self.isolations = 0
        self.records_refused = 0
        self.writes_fenced = 0
        self.last_commit_latency = 0.0
        #: Called on this thread with each commit's latency (seconds): a metrics observer.
        self.on_commit: Callable[[float], None] | None = None
        self.thread = threading.Thread(target=self._run, name="master-store", daemon=True)

    # -- the queue (any thread) ------------------------------------------------------------

    def check_open(self) -> None:
        if self.closing:
            raise StoreError(f"store {self.where} is closed; no more writes are accepted")

    def enqueue(self, op: Op) -> None:
        with self.cond:
            self.check_open()
            self.ops.append(op)
            self.cond.notify()

    def queue_progress(self, task_id: str, progress: float, updated_at: float) -> None:
        with self.cond:
            self.check_open()
            if task_id in self.progress:
                self.progress_coalesced += 1
            elif not self.progress:
                self.progress_due = time.monotonic() + self.progress_interval
                self.cond.notify()
            self.progress[task_id] = (progress, updated_at)

    def drop_progress(self, task_id: str) -> None:
        with self.cond:
            self.check_open()
            self.progress.pop(task_id, None)

    def watch_file(self, guard: FileGuard) -> None:
        """From now on check the SQLite file around each commit and every probe_interval."""
        with self.cond:
            self.guard = guard
            self.next_probe = time.monotonic() + self.probe_interval
            self.cond.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread (``done`` resolves)."""
        with self.cond:
            self.closing = True
            self.cond.notify()

    def claimed(self, epoch: int) -> None:
        """On the thread, once a claim committed: a new term, fenced writes allowed again."""
        log.info("database %s: leadership epoch %d claimed", self.where, epoch)
        self.epoch, self.fenced = epoch, None
        self.orphans = []  # from another term: deleting them now could hit the new one's

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while not (self.ops or self.closing):
                        now = time.monotonic()
                        if self.progress and now >= self.progress_due:
                            break
                        if now >= self.next_probe:
                            break
                        due = min(self.next_probe,
                                  self.progress_due if self.progress else math.inf)
                        self.cond.wait(None if due == math.inf else due - now)
                    ops, self.ops = self.ops, []
                    progress: Progress = {}
                    if ops or self.closing or time.monotonic() >= self.progress_due:
                        progress, self.progress = self.progress, {}  # else: a probe
                    last = self.closing and not ops and not progress
                if last:
                    return
                if ops or progress:
                    self._process(ops, progress)
                else:
                    self._probe()
        except BaseException as exc:  # a bug: fail what is queued rather than hang its callers
            log.exception("store writer thread crashed")
            with self.cond:
                self.closing, ops, self.ops = True, self.ops, []
            resolve(ops, [], StoreError(f"store {self.where} writer crashed: {exc}"))
        finally:
            try:
                self.engine.dispose()
                if self.watchdog is not None:
                    self.watchdog.close()
            finally:
                self.done.set_result(None)

    def _process(self, ops: list[Op], progress: Progress) -> None:
        """Consecutive writes share one transaction; solo ops run alone, in order."""
        batch: list[Op] = []
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

    # -- transactions ----------------------------------------------------------------------

    def _watched(self) -> contextlib.AbstractContextManager[None]:
        return self.watchdog.guard() if self.watchdog is not None else contextlib.nullcontext()

    def _transaction(self, work: Callable[[Session], Any], *, writes: bool,
                     fenced: bool) -> Any:
        """``work`` in one transaction, tried again on locks and lost connections (see the
        module docstring). ``writes``: check the SQLite file before and after the commit;
        ``fenced``: check the leader epoch first. Raises what failed it: ``Fault`` when
        the file was not ours, or the COMMIT's fate is unknown (``committed`` set)."""
        start = time.monotonic()
        delay = 0.01
        reconnected = False
        while True:
            attempt = time.monotonic()
            committing = False
            try:
                if writes:
                    self._check_file()
                with self._watched(), Session(self.engine) as session:
                    session.begin()
                    if fenced and self.epoch is not None:
                        fencing.check(session, self.epoch, self.where)
                    result = work(session)
                    if writes:
                        self._check_file()  # still ours: commit; else roll back
                    committing = True
                    session.commit()
                break
            except StoreFenced:
                raise
            except Exception as exc:
                if committing and is_disconnect(exc):
                    raise Fault(self._unsure(exc), committed=result) from exc
                waited = time.monotonic() - start + delay
                if is_transient(exc) and waited < self.max_lock_wait and writes:
                    self.lock_retries += 1
                elif is_disconnect(exc) and (waited < self.reconnect_wait or not (
                        reconnected or self._cut())):
                    # A lost connection gets one new one at least (a session the server
                    # ended, a restart), unless the server is known not to answer at all.
                    self.reconnects += 1
                    reconnected = True
                else:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        self.last_commit_latency = time.monotonic() - attempt
        if self.on_commit is not None:
            try:
                self.on_commit(self.last_commit_latency)
            except Exception:  # noqa: BLE001 - an observer must not fail a committed batch
                log.exception("store commit observer failed")
        reason = self.guard.check() if writes and self.guard is not None else None
        if reason is not None:
            raise Fault(reason, committed=result)
        return result

    def _cut(self) -> bool:
        """Did the watchdog cut the last request off (its server does not answer)?"""
        return self.watchdog is not None and self.watchdog.cut_reason is not None

    def _check_file(self) -> None:
        reason = self.guard.check() if self.guard is not None else None
        if reason is not None:
            raise Fault(reason)

    def _commit(self, ops: list[Op], progress: Progress) -> tuple[list[Any], int]:
        """One fenced transaction for ``ops`` and ``progress``, first deleting the orphans."""
        orphans = list(self.orphans)

        def work(session: Session) -> tuple[list[Any], int]:
            if orphans:
                tasks.delete(session, orphans)
            return apply(session, ops, progress)

        results, rows = self._transaction(work, writes=True, fenced=True)
        if orphans:
            log.warning("deleted %d task(s) whose submit had failed but whose rows may have "
                        "been stored: %s", len(orphans), ", ".join(orphans))
            self.orphans = self.orphans[len(orphans):]
        return results, rows

    def _solo(self, op: Op) -> None:
        try:
            result = self._transaction(op.work or (lambda _s: None), writes=op.writes,
                                       fenced=False)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            if op.cfut is not None:  # a blocking caller (open): it explains the error itself
                cut = self._cut() and is_disconnect(exc)
                resolve([op], [], StoreUnavailable(self._describe(exc)) if cut else exc)
                return
            unavailable = unavailable_cause(exc)
            reason = self._describe(exc) if unavailable else db_message(exc)
            log.error("database request failed on %s: %s", self.where, reason)
            resolve([op], [], StoreUnavailable(reason) if unavailable else StoreError(reason))
            return
        if op.committed is not None:
            op.committed(result)
        resolve([op], [result], None)

    def _write(self, ops: list[Op], progress: Progress) -> None:
        if self.fenced is not None:
            self._fence(ops, None)
            return
        if self.offline and not self._back_online():
            self.batches_failed += 1
            resolve(ops, [], StoreUnavailable(self.health.reason or "database unavailable"))
            return
        try:
            results, rows = self._commit(ops, progress)
        except StoreFenced as exc:
            self._fence(ops, exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported through the futures
            if unavailable_cause(exc):
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

    def _isolate(self, ops: list[Op]) -> None:
        """Commit what can be of a batch that failed on some request's data: bisect it, so
        k bad requests among n cost about 2k·log2(n) small transactions, and refuse each bad
        one alone. A database fault on the way fails the rest as unavailable."""
        stack = [ops]
        while stack:
            group = stack.pop()
            try:
                results, rows = self._commit(group, {})
            except StoreFenced as exc:
                self._fence(group + [op for g in stack for op in g], exc)
                return
            except Exception as exc:  # noqa: BLE001 - reported through the futures
                if unavailable_cause(exc):
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

    # -- outcomes --------------------------------------------------------------------------

    def _committed(self, ops: list[Op], results: list[Any], rows: int) -> None:
        self.batches_committed += 1
        self.rows_written += rows
        self._fault_cleared()
        resolve(ops, results, None)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, Fault):
            return exc.reason
        if is_disconnect(exc):
            cut = self.watchdog.cut_reason if self.watchdog is not None else None
            why = cut or f"lost the connection to its server ({_first_line(db_message(exc))})"
            return f"database write failed on {self.where}: {why}"
        what = "stayed locked" if is_transient(exc) else "failed"
        return f"database write {what} on {self.where}: {db_message(exc)}"

    def _unsure(self, exc: BaseException) -> str:
        return (f"{self._describe(exc)}; this happened during COMMIT, so whether the write "
                "was stored is unknown: it counts as failed (tasks it created are deleted "
                "by the next commit)")

    def _fail_unavailable(self, ops: list[Op], exc: BaseException) -> None:
        reason = self._describe(exc)
        self.batches_failed += 1
        if isinstance(exc, Fault) and exc.committed is not None:
            results = exc.committed[0]
            for op, result in zip(ops, results, strict=False):
                self.orphans += op.new_task_ids(result)
        lost = is_disconnect(exc) or is_disconnect(exc.__cause__ or exc)
        self._fault_seen(reason, lost=lost)
        log.debug("%d requests failed: %s", len(ops), reason)
        resolve(ops, [], StoreUnavailable(reason))

    def _fence(self, ops: list[Op], exc: StoreFenced | None) -> None:
        """Refuse ``ops`` (and from now on every write) because another master claimed."""
        if exc is not None and self.fenced is None:
            log.error("%s", exc)  # once per term lost
            self.orphans = []
        if exc is not None:
            self.fenced = str(exc)
            self._fault_cleared()  # the database answered: it is not the problem
        self.writes_fenced += len(ops)
        resolve(ops, [], StoreFenced(self.fenced or str(exc)))

    def _refuse(self, op: Op, exc: BaseException) -> None:
        self.records_refused += 1
        what = f"task {op.save['id']}" if op.save is not None else "a request"
        msg = (f"database write failed on {self.where}: the database refuses {what} "
               f"({db_message(exc)}); nothing of it was stored, and the same data would "
               "fail again")
        log.warning("%s", msg)
        resolve([op], [], RecordRefused(msg))

    # -- faults and probes -----------------------------------------------------------------

    def _fault_seen(self, reason: str, *, lost: bool = False) -> None:
        if not (lost and self.offline and self.health.reason is not None):
            self.health.fault(reason)  # (still out of reach: keep the first words for it)
        self.offline = lost
        self.next_probe = min(self.next_probe, time.monotonic() + self.probe_interval)

    def _fault_cleared(self) -> None:
        self.offline = False
        if self.health.clear() and self.guard is None:
            self.next_probe = math.inf

    def _back_online(self) -> bool:
        """While out of reach: probe if one is due; is the database reachable again?"""
        if time.monotonic() >= self.next_probe:
            self._probe()
        return not self.offline

    def _probe(self) -> None:
        """Look at the file; while faulted, try a tiny write to see if it cleared (first
        asking the watchdog whether the server answers at all, which is quicker)."""
        now = time.monotonic()
        self.next_probe = now + self.probe_interval if (
            self.guard is not None or self.health.reason is not None) else math.inf
        reason = self.guard.check() if self.guard is not None else None
        if reason is not None:
            self._fault_seen(reason)
            return
        if self.health.reason is None:
            return
        if self.offline and self.watchdog is not None and not self.watchdog.alive():
            return
        try:
            self._commit([Op(work=schema.probe)], {})
        except StoreFenced as exc:
            self._fence([], exc)
            return
        except Exception as exc:  # noqa: BLE001 - still faulted
            self._fault_seen(self._describe(exc), lost=is_disconnect(exc))
            return
        self._fault_cleared()
