"""Every attempt of a task, what it used, and when a retry may start — pure: no I/O, no clock.

A task is launched up to ``retries + 1`` times; each launch is an *attempt* (numbered from 1,
as ``TaskRecord.attempts`` counts them and slaves echo them). ``AttemptLog`` keeps, per task:

- the attempts that ended (slave, start, end, state, exit code, message, final usage), and
- the current one, whose state the task record itself carries: every view re-derives it from
  the record (``view``), so the record stays the one source of truth for the live attempt.

Contract:

- ``observe(rec)`` after every change of a record (the master calls it where it saves one),
  and before ``requeue()`` wipes the attempt's end from the record. It starts an attempt at
  launch and closes it at a terminal state; it never changes an attempt that ended, except to
  bring the current one back in line with a record that was put back (a kill not persisted).
- ``rows(rec)`` are the ended attempts not yet known durable: the store writes them in the same
  transaction as the record, and ``confirm`` marks them durable once that commit succeeded, so
  a save that failed is retried with its attempts when the record is re-saved.
- Memory is bounded: the histories of tasks that are final (terminal, not re-queued) are kept
  for the ``keep_ended`` most recent ones; older ones are read from the database (``history``
  answers None for them). Histories with rows not yet durable are kept longer, up to twice
  ``keep_ended`` in all (a row the database refuses would otherwise stay for good).
- Usage is untrusted input from slaves: ``clean_usage`` keeps a sample only when every figure
  is finite, non-negative and bounded, so nothing here can put NaN or 1e308 into JSON.
- Retries wait ``backoff(retry_delay, n)`` after attempt ``n`` ended: ``retry_delay`` doubled
  for each earlier failure, up to ``max(RETRY_DELAY_CAP, retry_delay)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from master.tasks import ACTIVE_STATES, DEFAULT_RETRY_DELAY, PENDING, STAGING, TaskRecord
from protos import cluster_pb2 as pb

__all__ = ["Attempt", "AttemptLog", "MAX_CPU_SECONDS", "MAX_MEM_MIB", "RETRY_DELAY_CAP",
           "Usage", "backoff", "clean_usage", "detail_json", "retry_at", "retry_reason"]

#: Retries never wait longer than this, unless the task's own ``retry_delay`` is longer.
RETRY_DELAY_CAP = 60.0
#: Bounds of what a slave may report: 65,536 cpus busy for 180 days; 1 TiB·1024 of memory.
MAX_CPU_SECONDS = 1e12
MAX_MEM_MIB = float(1 << 40)
#: An attempt keeps at most this much of its message (the record keeps all of it).
MAX_MESSAGE_CHARS = 4096
_SOURCES = frozenset({"cgroups v1", "cgroups v2", "proc"})


@dataclass(frozen=True)
class Usage:
    """What an attempt used: CPU seconds (user + system), memory now and at most (MiB)."""

    cpu_seconds: float
    mem_mib: float
    mem_peak_mib: float
    source: str  # "cgroups v1", "cgroups v2", "proc" (or "unknown": a slave said otherwise)
    timestamp: float | None = None  # when the slave sampled it (Unix seconds)

    def to_json(self) -> dict[str, Any]:
        return {"cpu_seconds": round(self.cpu_seconds, 3), "mem_mib": round(self.mem_mib, 2),
                "mem_peak_mib": round(self.mem_peak_mib, 2), "source": self.source,
                "timestamp": self.timestamp}


def _figure(value: float, high: float) -> float | None:
    return float(value) if math.isfinite(value) and 0.0 <= value <= high else None


def clean_usage(msg: pb.ResourceUsage) -> Usage | None:
    """A slave's usage report as a `Usage`, or None when it is not believable (a figure
    missing, NaN, infinite, negative or past the bounds). An unknown `source` is kept as
    "unknown"; a peak below the current figure is raised to it."""
    if not (msg.HasField("cpu_seconds") and msg.HasField("mem_mib")):
        return None
    cpu = _figure(msg.cpu_seconds, MAX_CPU_SECONDS)
    mem = _figure(msg.mem_mib, MAX_MEM_MIB)
    peak = _figure(msg.mem_peak_mib, MAX_MEM_MIB) if msg.HasField("mem_peak_mib") else mem
    if cpu is None or mem is None or peak is None:
        return None
    source = msg.source if msg.source in _SOURCES else "unknown"
    stamp = _figure(msg.timestamp, 1e11) if msg.HasField("timestamp") else None
    return Usage(cpu, mem, max(peak, mem), source, stamp)


@dataclass
class Attempt:
    """One launch of a task. ``saved`` is the row last known durable (None: not stored)."""

    task_id: str
    number: int
    slave_id: str | None
    state: str = STAGING
    launched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    usage: Usage | None = None
    saved: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ended(self) -> bool:
        return self.state not in ACTIVE_STATES and self.state != PENDING

    def sync(self, rec: TaskRecord) -> None:
        """Take the current attempt's state from its record (the source of truth)."""
        self.slave_id = rec.slave_id
        self.state = rec.state
        self.started_at = rec.started_at
        self.finished_at = rec.finished_at
        self.exit_code = rec.exit_code
        self.message = rec.message[:MAX_MESSAGE_CHARS]

    def to_json(self) -> dict[str, Any]:
        """The shape of one item of ``attempts`` in ``GET /master/tasks/<id>``."""
        return {"attempt": self.number, "slave_id": self.slave_id, "state": self.state,
                "launched_at": self.launched_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "exit_code": self.exit_code,
                "message": self.message,
                "usage": None if self.usage is None else self.usage.to_json()}

    def row(self) -> dict[str, Any]:
        """The ``attempts`` table's columns (store_schema.AttemptRow)."""
        u = self.usage
        return {"task_id": self.task_id, "number": self.number, "slave_id": self.slave_id,
                "state": self.state, "launched_at": self.launched_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "message": self.message,
                "cpu_seconds": None if u is None else u.cpu_seconds,
                "mem_mib": None if u is None else u.mem_mib,
                "mem_peak_mib": None if u is None else u.mem_peak_mib,
                "usage_source": None if u is None else u.source,
                "usage_at": None if u is None else u.timestamp}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Attempt:
        """Inverse of ``row()``; the row is what is durable, so it becomes ``saved``."""
        usage = None
        if row.get("cpu_seconds") is not None and row.get("mem_mib") is not None:
            usage = Usage(float(row["cpu_seconds"]), float(row["mem_mib"]),
                          float(row.get("mem_peak_mib") or row["mem_mib"]),
                          str(row.get("usage_source") or "unknown"), row.get("usage_at"))
        return cls(task_id=str(row["task_id"]), number=int(row["number"]),
                   slave_id=row.get("slave_id"), state=str(row.get("state") or ""),
                   launched_at=row.get("launched_at"), started_at=row.get("started_at"),
                   finished_at=row.get("finished_at"), exit_code=row.get("exit_code"),
                   message=str(row.get("message") or ""), usage=usage, saved=dict(row))


def _is_current(rec: TaskRecord, attempt: Attempt) -> bool:
    """True when the record is on this attempt (launched and not re-queued since)."""
    return rec.slave_id is not None and rec.attempts == attempt.number


def view(rec: TaskRecord, attempts: Iterable[Attempt]) -> list[Attempt]:
    """Copies of `attempts` (oldest first, none past the record's count) with the current
    one brought in line with the record, and added if it is missing (a record recovered
    after a restart, or one whose attempts were read from the database before its end)."""
    out = [replace(a) for a in attempts if a.number <= rec.attempts]
    out.sort(key=lambda a: a.number)
    if rec.slave_id is not None and rec.attempts > 0:
        if not out or out[-1].number != rec.attempts:
            out.append(Attempt(rec.id, rec.attempts, rec.slave_id))
        out[-1].sync(rec)
    return out


class AttemptLog:
    """The attempts of one master's tasks (see the module docstring)."""

    def __init__(self, keep_ended: int = 4096) -> None:
        self.keep_ended = keep_ended
        self._live: dict[str, list[Attempt]] = {}  # tasks not final
        self._ended: OrderedDict[str, list[Attempt]] = OrderedDict()  # final, newest last

    def __len__(self) -> int:
        return len(self._live) + len(self._ended)

    def _take(self, tid: str) -> list[Attempt] | None:
        found = self._live.get(tid)
        if found is None:
            found = self._ended.pop(tid, None)
        return found

    def _place(self, rec: TaskRecord, attempts: list[Attempt]) -> None:
        if not rec.is_terminal:
            self._ended.pop(rec.id, None)
            self._live[rec.id] = attempts
            return
        self._live.pop(rec.id, None)
        self._ended[rec.id] = attempts
        self._ended.move_to_end(rec.id)
        for _ in range(len(self._ended) - self.keep_ended):
            tid, oldest = next(iter(self._ended.items()))
            if len(self._ended) <= 2 * self.keep_ended and any(
                    a.ended and a.row() != a.saved for a in oldest):
                self._ended.move_to_end(tid)  # not durable yet: keep it a while longer
                break
            del self._ended[tid]

    def observe(self, rec: TaskRecord) -> None:
        """Bring the record's current attempt up to date: started at launch, ended at a
        terminal state. Cheap (a dict lookup); call it after every change of the record."""
        if rec.attempts == 0:
            return
        attempts = self._take(rec.id)
        if attempts is None:
            attempts = []
        while attempts and attempts[-1].number > rec.attempts:
            attempts.pop()  # launched, then taken back (its STAGING was never stored)
        if rec.slave_id is not None:
            if not attempts or attempts[-1].number != rec.attempts:
                attempts.append(Attempt(rec.id, rec.attempts, rec.slave_id,
                                        launched_at=rec.updated_at
                                        if rec.state == STAGING else None))
            attempts[-1].sync(rec)
        if attempts:
            self._place(rec, attempts)

    def sample(self, rec: TaskRecord, attempt: int | None, usage: Usage) -> bool:
        """A usage sample (or the final figures) of attempt `attempt`; False when that is
        not the record's current attempt (a stale report changes nothing)."""
        attempts = self._live.get(rec.id) or self._ended.get(rec.id)
        if not attempts or (attempt is not None and attempt != rec.attempts):
            return False
        current = attempts[-1]
        if not _is_current(rec, current):
            return False
        current.usage = usage
        return True

    def history(self, rec: TaskRecord) -> list[Attempt] | None:
        """Every attempt of `rec`, oldest first, as ``view`` shows them; None when they are
        not in memory (an old final task: read them from the database, then ``view``)."""
        if rec.attempts == 0:
            return []
        attempts = self._live.get(rec.id)
        if attempts is None:
            attempts = self._ended.get(rec.id)
        return None if attempts is None else view(rec, attempts)

    def last_ended(self, tid: str) -> Attempt | None:
        """The latest attempt of a task that ended (for the retry hold and slave hint)."""
        attempts = self._live.get(tid) or self._ended.get(tid)
        if attempts and attempts[-1].ended:
            return attempts[-1]
        return None

    def rows(self, rec: TaskRecord) -> list[dict[str, Any]]:
        """Rows of `rec`'s ended attempts that are not known durable, to save with it."""
        attempts = self._live.get(rec.id) or self._ended.get(rec.id)
        if not attempts:
            return []
        out = []
        for a in attempts:
            if a.ended:
                row = a.row()
                if row != a.saved:
                    out.append(row)
        return out

    def confirm(self, tid: str, rows: list[dict[str, Any]]) -> None:
        """`rows` of task `tid` are committed."""
        attempts = self._live.get(tid) or self._ended.get(tid)
        if not attempts:
            return
        by_number = {a.number: a for a in attempts}
        for row in rows:
            a = by_number.get(row["number"])
            if a is not None:
                a.saved = row

    def remember(self, rec: TaskRecord, rows: list[dict[str, Any]]) -> None:
        """Attempts of a final task read from the database: kept with the recent ones, so
        asking again costs no read (unless memory already holds newer ones)."""
        if rec.is_terminal and rec.id not in self._live and rec.id not in self._ended:
            attempts = sorted((Attempt.from_row(r) for r in rows), key=lambda a: a.number)
            self._place(rec, view(rec, attempts))

    def recover(self, rec: TaskRecord, rows: list[dict[str, Any]]) -> None:
        """A record loaded at start-up, with its attempts as the database holds them."""
        attempts = sorted((Attempt.from_row(r) for r in rows), key=lambda a: a.number)
        if attempts:
            self._place(rec, attempts)
        self.observe(rec)


# -- retries ------------------------------------------------------------------------------


def backoff(retry_delay: float | None, ended: int, cap: float = RETRY_DELAY_CAP) -> float:
    """Seconds to wait after attempt `ended` before the next: `retry_delay` doubled for
    every attempt before it, at most ``max(cap, retry_delay)``; 0 for no wait."""
    base = DEFAULT_RETRY_DELAY if retry_delay is None or not math.isfinite(retry_delay) else (
        retry_delay)
    if base <= 0 or ended < 1:
        return 0.0
    return min(max(cap, base), base * 2.0 ** min(ended - 1, 64))


def retry_at(rec: TaskRecord, last: Attempt | None) -> float | None:
    """When a re-queued task may be launched again (its last attempt's end plus the
    backoff), or None when it need not wait (never launched, or no delay)."""
    if rec.state != PENDING or rec.attempts == 0 or last is None:
        return None
    wait = backoff(rec.retry_delay, rec.attempts)
    if wait <= 0 or last.finished_at is None:
        return None
    return last.finished_at + wait


def retry_reason(rec: TaskRecord, last: Attempt | None, at: float, now: float) -> str:
    """Why a PENDING task waits for its retry, in one sentence for people."""
    why = ""
    if last is not None:
        why = f" after attempt {last.number} {last.state}"
        if last.exit_code is not None:
            why += f" (exit code {last.exit_code})"
        elif last.message:
            why += f" ({last.message[:120]})"
    return (f"retry backoff: attempt {rec.attempts + 1} of {rec.retries + 1} starts in "
            f"{max(0.0, at - now):.1f}s{why}")


def detail_json(rec: TaskRecord, attempts: list[Attempt], held_until: float | None,
                now: float) -> dict[str, Any]:
    """``GET /master/tasks/<id>``: the record's fields, then ``attempt`` (the current
    attempt's number), ``attempts`` (every attempt), ``usage`` (the latest attempt's last
    figures), ``retry_at`` and ``pending_reason`` (while it waits for a retry)."""
    data = rec.to_json()
    usage = attempts[-1].usage if attempts else None
    waiting = held_until is not None and rec.state == PENDING and held_until > now
    last = attempts[-1] if attempts else None
    data.update(attempt=rec.attempts, attempts=[a.to_json() for a in attempts],
                usage=None if usage is None else usage.to_json(),
                retry_at=held_until if waiting else None,
                pending_reason=retry_reason(rec, last, held_until, now)
                if waiting and held_until is not None else None)
    return data
