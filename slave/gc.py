"""Garbage collection of ended tasks' sandboxes, as Mesos's agent collects executor
directories (`--gc_delay`, its disk watch).

`GarbageCollector` is a helper object owned by the `Slave` actor: its methods run on the
actor's loop (`ended` from the actor's handler, passes through `delay` to the actor), and
what may block runs in worker threads (`slave.gc_files`). Contract:

- A sandbox is deleted `delay` (`--gc-delay`, default a day) after its task ended, and
  sooner, oldest first, while the work dir's file system is fuller than `watermark`
  (`--gc-disk-watermark`, default 90%; the larger of its blocks and inodes used).
- Never the sandbox of a task running here: each pass checks, on the loop, and moves what
  it takes into `<work_dir>/gc-trash/` with one rename, so that no launch can come between
  the check and the removal (an attempt re-run gets a new sandbox); a worker thread then
  deletes the trash.
- Bounded work per pass: at most `batch` sandboxes taken (a rename each, on the loop), or
  for disk space alone the `disk_batch` oldest (so that little more than needed goes); the
  disk measurement and the deletion run in a worker thread; then the next pass: at once
  while the disk is over the watermark and something is queued, else when the next sandbox
  is due, and at least every `interval` (the disk's check).
- Survives a restart: when a task ends its sandbox's mtime is set to that time; at start-up
  (`recover`) the sandboxes on disk are queued by their mtime (the ones of tasks an earlier
  slave left running, named by its journal, as ending now) and trash left by a crash is
  deleted. A sandbox whose task ends again (a re-run) is due after its last end.
- What was collected is remembered (`slave.tombstones`), so `/logs` answers 410 for it.
- Visible in `/slave(N)/vars` (`gc_*`) and `/metrics` (`slave_gc_*`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from libproc import UPID, Clock, Timer, delay
from libproc.future import as_future
from slave.gc_files import (
    TRASH,
    DiskUsage,
    disk_usage,
    move_to_trash,
    remove_trees,
    scan_sandboxes,
)
from slave.gc_queue import GcQueue
from slave.sandbox import sandbox_dir
from slave.tombstones import Tombstones

__all__ = ["DAY", "GarbageCollector", "GcConfig", "format_duration"]

log = logging.getLogger("slave.gc")

DAY = 86400.0


@dataclass(frozen=True)
class GcConfig:
    delay: float = DAY  # --gc-delay: seconds from a task's end to its sandbox's removal
    watermark: float = 0.9  # --gc-disk-watermark: collect sooner past this fraction used
    interval: float = 60.0  # --gc-interval: the disk is checked at least this often
    batch: int = 128  # most sandboxes taken per pass (a rename each, on the loop)
    disk_batch: int = 8  # most taken per pass for disk space alone (then it is measured again)


class GarbageCollector:
    """Collects one slave's ended sandboxes (see the module docstring)."""

    def __init__(self, work_dir: Path, config: GcConfig, pid: UPID,
                 in_use: Callable[[], Collection[str]]) -> None:
        """`in_use()`: the names of the sandboxes of the tasks running here (on the loop)."""
        self.work_dir = str(work_dir)
        self.sandboxes = os.path.join(self.work_dir, "sandboxes")
        self.trash = os.path.join(self.work_dir, TRASH)
        self.config = config
        self.pid = pid
        self._in_use = in_use
        self.queue = GcQueue()
        self.tombstones = Tombstones(self.work_dir)
        self._timer: Timer | None = None
        self._running = False  # a pass is under way (one at a time)
        self._recovered = False  # no pass before the sandboxes on disk are queued
        self._closed = False
        self._run = uuid.uuid4().hex[:8]  # trash names of this run: unique across restarts
        self._seq = 0
        self.counts = {"gc_sandboxes_collected": 0, "gc_collected_by_delay": 0,
                       "gc_collected_by_disk": 0, "gc_bytes_collected": 0,
                       "gc_removals_failed": 0, "gc_passes": 0}
        self.last_pass_at: float | None = None
        self.last_pass_secs = 0.0
        self.disk: DiskUsage | None = None
        self._full = False  # over the watermark with nothing left to collect (warned)

    # -- what the actor calls ----------------------------------------------------------------

    def ended(self, task_id: str, attempt: int) -> None:
        """A task's attempt ended here: its sandbox is due `delay` from now."""
        name = _name(task_id, attempt)
        if name is None:
            return  # an id that could not name a sandbox: none was made
        now = Clock.now()
        try:  # the durable record of when it ended, for a restarted slave
            os.utime(os.path.join(self.sandboxes, name), (now, now), follow_symlinks=False)
        except FileNotFoundError:
            return  # it never got a sandbox (could not start)
        except OSError as exc:
            log.debug("gc: cannot touch sandbox %s: %s", name, exc)
        self.queue.push(name, now)
        self.tombstones.forget(name)
        due = now + self.config.delay
        if self._recovered and not self._running and not self._closed and (
                self._timer is None or self._timer.deadline > due):
            self._arm(self.config.delay)

    def collected(self, task_id: str, attempt: int) -> str | None:
        """Why this attempt's files are gone when its sandbox was collected (one sentence
        for `/logs`), else None."""
        name = _name(task_id, attempt)
        found = None if name is None else self.tombstones.get(name)
        if found is None:
            return None
        at, reason = found
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
        why = (f"{format_duration(self.config.delay)} after the task ended (--gc-delay)"
               if reason == "delay" else
               f"early: the disk was over --gc-disk-watermark "
               f"{100 * self.config.watermark:g}%")
        return f"its sandbox was garbage-collected on this slave at {when}, {why}"

    async def recover(self, interrupted: Collection[str] = ()) -> None:
        """Queue the sandboxes on disk and start collecting; the actor calls this once, at
        start-up, after its orphan clean-up. `interrupted`: the sandbox paths of tasks an
        earlier slave left running (they end now)."""
        now = Clock.now()
        names = {os.path.basename(p) for p in interrupted
                 if os.path.dirname(os.path.normpath(p)) == self.sandboxes}
        try:
            found, records = await asyncio.to_thread(self._recover_files, names, now)
        except Exception:  # noqa: BLE001 - collect what ends from now on, at least
            log.exception("gc: could not look at the sandboxes on disk")
            found, records = GcQueue(), []
        found.merge(self.queue)  # what ended meanwhile; a pass skips what runs again
        self.queue = found
        self.tombstones.load(records)
        self._recovered = True
        if not self._closed:
            self._arm(0.0)

    def close(self) -> None:
        """The actor is gone: no more passes (one under way finishes its thread's work)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def vars(self) -> list[tuple[str, str]]:
        """`/vars` lines: settings, the queue, what was collected, the last pass."""
        disk = self.disk
        return [("gc_delay_secs", f"{self.config.delay:g}"),
                ("gc_disk_watermark", f"{self.config.watermark:g}"),
                ("gc_sandboxes", str(len(self.queue))),
                *((k, str(v)) for k, v in self.counts.items()),
                ("gc_last_pass", "-" if self.last_pass_at is None
                 else f"{self.last_pass_at:.3f}"),
                ("gc_last_pass_secs", f"{self.last_pass_secs:.6f}"),
                ("gc_disk_usage", "-" if disk is None else f"{disk.fraction:.4f}")]

    # -- passes ------------------------------------------------------------------------------

    def _recover_files(self, interrupted: set[str], now: float
                       ) -> tuple[GcQueue, list[tuple[str, float, str]]]:
        """In a worker thread: delete old trash, mark interrupted sandboxes ended, queue
        what the disk holds, read the tombstones."""
        try:
            left = [os.path.join(self.trash, n) for n in os.listdir(self.trash)]
        except OSError:
            left = []
        if left:
            freed, failed, _ = remove_trees(left)
            log.info("gc: deleted %d sandbox(es) a crash left in %s (%d bytes)",
                     len(left) - failed, self.trash, freed)
        for name in interrupted:
            try:
                os.utime(os.path.join(self.sandboxes, name), (now, now), follow_symlinks=False)
            except OSError:
                pass
        found = scan_sandboxes(self.sandboxes)
        queue = GcQueue.of((now if name in interrupted else mtime, name) for mtime, name in found)
        return queue, self.tombstones.read()

    def _arm(self, seconds: float | None = None) -> None:
        """The next pass after `seconds`, or when the next sandbox is due (at most
        `interval` from now)."""
        if self._timer is not None:
            self._timer.cancel()
        if seconds is None:
            seconds = self.config.interval
            oldest = self.queue.oldest()
            if oldest is not None:
                seconds = min(seconds, max(0.0, oldest + self.config.delay - Clock.now()))
        self._timer = delay(seconds, self.pid, self._start_pass)

    def _start_pass(self) -> None:
        """Run by the timer, in the actor's mailbox."""
        self._timer = None
        if self._running or self._closed:
            return
        self._running = True
        as_future(self._pass())

    async def _pass(self) -> None:
        again = False
        try:
            again = await self._collect()
        except Exception:  # noqa: BLE001 - the next pass tries again
            log.exception("gc: pass failed")
        finally:
            self._running = False
            if not self._closed:
                self._arm(0.0 if again else None)

    async def _collect(self) -> bool:
        """One pass; True when the next should follow at once (the disk is still full)."""
        started = time.perf_counter()
        disk = await asyncio.to_thread(disk_usage, self.work_dir)
        self.disk = disk
        over = disk is not None and disk.fraction > self.config.watermark
        now = Clock.now()
        in_use = self._in_use()
        due_by = now - self.config.delay
        skip = in_use.__contains__
        taken = self.queue.take(due_by=due_by, everything=False, limit=self.config.batch,
                                skip=skip)
        if over and not taken:  # none due: the oldest, a few at a time, measuring between
            taken = self.queue.take(due_by=due_by, everything=True,
                                    limit=self.config.disk_batch, skip=skip)
        moved: list[str] = []
        records: list[tuple[str, float, str]] = []
        failed = 0
        first_error = ""
        for name, ended_at in taken:  # on the loop: nothing can launch into it meanwhile
            self._seq += 1
            try:
                dst = move_to_trash(os.path.join(self.sandboxes, name), self.trash,
                                    f"{self._run}.{self._seq}")
            except OSError as exc:
                failed += 1
                first_error = first_error or f"{name}: {exc.strerror or exc}"
                continue
            if dst is not None:
                moved.append(dst)
                records.append((name, now, "delay" if ended_at <= due_by else "disk"))
        self.tombstones.add(records)
        compact = self.tombstones.snapshot() if self.tombstones.wants_compaction() else None
        freed, not_removed, errors = await asyncio.to_thread(self._remove, moved, compact)
        failed += not_removed
        first_error = first_error or (errors[0] if errors else "")
        by_disk = sum(1 for r in records if r[2] == "disk")
        self.counts["gc_sandboxes_collected"] += len(records)
        self.counts["gc_collected_by_delay"] += len(records) - by_disk
        self.counts["gc_collected_by_disk"] += by_disk
        self.counts["gc_bytes_collected"] += freed
        self.counts["gc_removals_failed"] += failed
        self.counts["gc_passes"] += 1
        self.last_pass_at = Clock.now()
        self.last_pass_secs = time.perf_counter() - started
        if failed:
            log.warning("gc: %d sandbox(es) not (wholly) removed: %s", failed, first_error)
        if records:
            log.debug("gc: collected %d sandbox(es), %d bytes (%d for disk space)",
                      len(records), freed, by_disk)
        self._report_full(over and not len(self.queue), disk)
        return over and len(self.queue) > 0

    def _remove(self, paths: list[str], compact: list[tuple[str, float, str]] | None
                ) -> tuple[int, int, list[str]]:
        """In a worker thread (no pass appends to the tombstones meanwhile)."""
        if compact is not None:
            self.tombstones.compact(compact)
        return remove_trees(paths)

    def _report_full(self, full: bool, disk: DiskUsage | None) -> None:
        """One WARN line when the disk stays over the watermark with nothing left to
        collect, one INFO line when that ends."""
        if full and not self._full and disk is not None:
            log.warning("gc: the disk of %s is %.1f%% full (watermark %.1f%%) and no ended "
                        "sandbox is left to collect", self.work_dir, 100 * disk.fraction,
                        100 * self.config.watermark)
        elif self._full and not full:
            log.info("gc: the disk of %s has room again, or sandboxes to collect",
                     self.work_dir)
        self._full = full


def format_duration(seconds: float) -> str:
    """86400 -> "1d", 5400 -> "90m", 2.5 -> "2.5s": as `--gc-delay` is written."""
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _name(task_id: str, attempt: int) -> str | None:
    try:
        return os.path.basename(sandbox_dir("", task_id, attempt))
    except ValueError:
        return None
