"""The master's side of attempts: history, usage, retries held back for their backoff.

`TaskAttempts(master)` is part of the master actor, as `Registrar` is: its methods run in
the master's mailbox unless they say otherwise. The decisions are in the pure
`master.attempts`; this module does the I/O (store reads, timers, logs). Contract:

- Every save of a task carries the rows of its ended attempts not yet durable (`rows`), so an
  attempt's end is committed with the task's state, and `saved` marks them durable.
- A task re-queued after attempt N (FAILED or LOST with retries left) is PENDING but not
  scheduled before ``finished_at + backoff(retry_delay, N)`` (`hold`): a timer on the libproc
  Clock ends the wait. A restarted master holds its recovered tasks again from their last
  attempt's end, so the wait survives a restart.
- Scheduling prefers another slave than the one a retried task's last attempt ended on
  (`avoid`, passed to the pure scheduler).
- Usage from slaves is checked (`attempts.clean_usage`); a report that is not believable is
  dropped and counted (`usage_refused` in /master/vars).
- `detail` and `log_source` run outside the mailbox (HTTP handlers): they dispatch to read
  the master's state and read old attempts from the database without holding the mailbox.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import libproc
from libproc import Timer, delay
from master import attempts as at
from master import task_queries
from master.api import shown
from master.attempts import Attempt, AttemptLog
from master.store import StoreError
from master.tasks import PENDING, TaskRecord
from protos import cluster_pb2 as pb

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["TaskAttempts"]

log = logging.getLogger("master")


def _now() -> float:
    return libproc.Clock.now()


class TaskAttempts:
    """Attempts and retries of one master's tasks (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.log = AttemptLog()
        self._held: dict[str, tuple[float, Timer]] = {}  # task id -> (retry_at, its timer)
        master._counters.setdefault("usage_refused", 0)

    # -- in the mailbox --------------------------------------------------------------------

    def recover(self, records: list[TaskRecord]) -> None:
        """Start-up (blocking): the attempts of tasks not final, and their retry holds."""
        wanted = [r for r in records if r.attempts > 0 and not r.is_terminal]
        rows = self.master.store.load_attempts_blocking([r.id for r in wanted]) if wanted else {}
        for rec in wanted:
            self.log.recover(rec, rows.get(rec.id, []))
            if rec.state == PENDING:
                self._hold(rec)

    def observe(self, rec: TaskRecord) -> list[dict[str, Any]]:
        """After a change of `rec`: bring its attempt up to date; the rows to save with it."""
        self.log.observe(rec)
        return self.log.rows(rec)

    def saved(self, tid: str, rows: list[dict[str, Any]], fut: asyncio.Future[None]) -> None:
        """The save that carried `rows` ended (a future's callback, between events)."""
        if rows and not fut.cancelled() and fut.exception() is None:
            self.log.confirm(tid, rows)

    def usage(self, rec: TaskRecord, attempt: int | None, usage: pb.ResourceUsage,
              sender: str) -> None:
        """A usage sample (progress report) or final figures (terminal status update)."""
        clean = at.clean_usage(usage)
        if clean is None:
            self.master._counters["usage_refused"] += 1
            log.debug("dropped unbelievable usage of task %s from slave %s: %s", rec.id,
                      sender, shown(str(usage).replace("\n", " "), 120))
            return
        self.log.sample(rec, attempt, clean)

    def requeue(self, rec: TaskRecord, now: float) -> bool:
        """FAILED or LOST: keep the attempt's end, then re-queue the task if a retry is
        left, held back for its backoff. True when re-queued (the caller saves it)."""
        self.log.observe(rec)  # before requeue() clears the attempt's end from the record
        if not rec.requeue(now):
            return False
        self._hold(rec)
        return True

    def retry_in(self, tid: str) -> float:
        """Seconds until a held task may start (0 when it is not held)."""
        held = self._held.get(tid)
        return 0.0 if held is None else max(0.0, held[0] - _now())

    def _hold(self, rec: TaskRecord) -> None:
        when = at.retry_at(rec, self.log.last_ended(rec.id))
        old = self._held.pop(rec.id, None)
        if old is not None:
            old[1].cancel()
        if when is None or when <= _now():
            return
        self._held[rec.id] = (when, delay(when - _now(), self.master.pid, self._due, rec.id))

    def _due(self, tid: str) -> None:
        if self._held.pop(tid, None) is not None:
            self.master._schedule()

    def held(self, tid: str) -> bool:
        """True while a re-queued task waits for its backoff."""
        return tid in self._held

    def ready(self, pending: list[TaskRecord]) -> list[TaskRecord]:
        """The PENDING tasks that may be scheduled now (not waiting for a retry)."""
        if not self._held:
            return pending
        return [r for r in pending if r.id not in self._held]

    def avoid(self, pending: list[TaskRecord]) -> dict[str, str]:
        """Task id -> the slave its last attempt ended on, for the scheduler's hint."""
        hints = {}
        for rec in pending:
            if rec.attempts:
                last = self.log.last_ended(rec.id)
                if last is not None and last.slave_id:
                    hints[rec.id] = last.slave_id
        return hints

    def _snapshot(self, tid: str) -> tuple[TaskRecord, list[Attempt] | None,
                                           float | None] | None:
        rec = self.master.tasks.get(tid)
        if rec is None:
            return None
        held = self._held.get(tid)
        return (TaskRecord(**rec.to_json()), self.log.history(rec),
                None if held is None else held[0])

    def _remember(self, tid: str, rows: list[dict[str, Any]]) -> None:
        rec = self.master.tasks.get(tid)
        if rec is not None:
            self.log.remember(rec, rows)

    def close(self) -> None:
        """The master stops: no retry timer may fire into its successor."""
        for _, timer in self._held.values():
            timer.cancel()
        self._held.clear()

    def _slave_url(self, slave_id: str) -> str | None:
        slave = self.master.slaves.get(slave_id)
        if slave is None:
            return None
        return f"http://{slave.pid.host}:{slave.pid.port}/{slave.pid.id}/logs"

    # -- outside the mailbox (HTTP handlers) -----------------------------------------------

    async def _history(self, tid: str) -> tuple[TaskRecord, list[Attempt],
                                                float | None] | None:
        found = await libproc.dispatch(self.master.pid, self._snapshot, tid)
        if found is None:  # not in memory: an older ended task, as the database has it
            stored = await self.master.store.read(functools.partial(task_queries.get,
                                                                    task_id=tid))
            if stored is None:
                return None
            found = (stored, None, None)
        rec, attempts, held = found
        if attempts is None:  # an old final task: its attempts are in the database only
            try:
                rows = await self.master.store.load_attempts(tid)
            except StoreError as exc:
                log.warning("could not read the attempts of task %s: %s", tid, exc)
                rows = []
            attempts = at.view(rec, [Attempt.from_row(r) for r in rows])
            if rows:
                libproc.dispatch(self.master.pid, self._remember, tid, rows)
        return rec, attempts, held

    async def detail(self, tid: str) -> dict[str, Any] | None:
        """``GET /master/tasks/<id>`` (see `attempts.detail_json`); None: no such task."""
        found = await self._history(tid)
        if found is None:
            return None
        rec, attempts, held = found
        return at.detail_json(rec, attempts, held, _now())

    async def log_source(self, tid: str, attempt: int | None) -> tuple[str, str, int] | str:
        """(slave id, its /logs URL, attempt) of attempt `attempt` of a task (default: the
        latest), or why there is none, for the master's log proxy."""
        found = await self._history(tid)
        if found is None:
            return f"no task with id {shown(tid)}"
        rec, attempts, _ = found
        if not attempts:
            return f"task {rec.id} has not been launched yet (state {rec.state}): no logs"
        number = attempt or attempts[-1].number
        chosen = next((a for a in attempts if a.number == number), None)
        if chosen is None:
            return (f"task {rec.id} has had {rec.attempts} attempt(s); there is no attempt "
                    f"{number}")
        if not chosen.slave_id:
            return f"attempt {number} of task {rec.id} ran on no known slave"
        url = await libproc.dispatch(self.master.pid, self._slave_url, chosen.slave_id)
        if url is None:
            return (f"attempt {number} of task {rec.id} ran on slave {chosen.slave_id}, "
                    "which the master no longer knows (its logs went with it)")
        return chosen.slave_id, url, number
