"""Task executor: runs each task as `/bin/sh -c COMMAND` in its own sandbox and process group.

The slave actor owns one Executor and calls it on its event loop, which nothing here blocks
for long. The per-task path uses no threads (on a busy slave every thread hop costs GIL
hand-offs): the sandbox (one mkdir, three opens) and the journal records are written on the
loop, the shell is forked with `subprocess.Popen` (vfork + exec, no asyncio transport) at most
MAX_CONCURRENT_SPAWNS per loop turn, and its exit is watched through a pidfd in one epoll set
that the loop polls (Linux >= 5.3; elsewhere a waiting thread per task, as asyncio's own
ThreadedChildWatcher does). Only /proc scans (a group outliving its shell, orphans) run in a
worker thread; progress polls and `read_log` read a bounded amount. Contracts the slave can
rely on:

- `<work_dir>/sandboxes/<escaped task id>@<attempt>/` holds `stdout` and `stderr` (the
  child's own fds, opened for append: no pipes, so a task outlives a dead slave). Two inodes
  per task, plus the directory: creating one costs 0.03-0.7 ms of kernel CPU on some file
  systems (ext4 without a journal scans past recently deleted inodes).
- `<work_dir>/tasks.journal` (one per executor, opened once for append) gets one JSON line per
  event for `kill_orphans`: a start record (task id, attempt, sandbox, pid, pgid, the leader's
  start ticks, command, the digests of the command and of the leader's /proc cmdline,
  started_at) once the shell is spawned, an end record (state, exit_code, finished_at) when
  its result is reported. Plain writes, no fsync: the journal
  only has to survive the slave process, not the machine (no task survives a reboot). It is
  rewritten with only the running tasks' start records by `Executor.kill_orphans` (start-up)
  and whenever it outgrows JOURNAL_COMPACT_AT.
- A task is its process group: kill = SIGTERM to the group, SIGKILL after `kill_grace`
  unless the group is gone. When the shell exits, what it left in its group is SIGKILLed.
- Every launch ends in exactly one `on_exit(TaskResult)` call on the loop, even one that
  could not start. `exit_code` is Popen's (and asyncio's) returncode: -N if the shell died of
  signal N (a command the shell ran that died of signal N shows as 128+N); None if nothing
  ran.
- Timers (timeout, kill grace) go through the injected `sleep`, so a pausable clock can drive
  them.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
import select
import signal
import string
import subprocess
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slave.progress import ProgressScanner

__all__ = ["Executor", "RunningTask", "TaskResult", "kill_orphans", "sandbox_path"]

log = logging.getLogger("slave.executor")

Sleep = Callable[[float], Awaitable[Any]]
Stream = Literal["stdout", "stderr"]

MAX_TAIL = 64 * 1024
"""Most stdout bytes scanned per task per poll; a task that wrote more is scanned from the end."""
MAX_CONCURRENT_SPAWNS = 16
"""Most tasks set up and forked in one turn of the event loop; the rest wait their turn (FIFO),
so that a launch of thousands of tasks leaves the loop free for I/O (heartbeats) between
batches."""
MAX_READ = 1024 * 1024
"""Most bytes one `read_log` call returns, whatever limit is asked for."""
JOURNAL = "tasks.journal"
"""The executor's journal of task starts and ends, in the work dir."""
JOURNAL_COMPACT_AT = 4 * 1024 * 1024
"""Journal size (bytes) past which it is rewritten with only the running tasks' starts (or at
twice its size after the last rewrite, if that is more)."""
MAX_RECORDED_COMMAND = 1024
"""Most characters of a task's command kept in its journal record (its digest covers it all)."""
MAX_UNPROVEN_WARNINGS = 20
"""Most journal records named one WARN line each when `kill_orphans` cannot prove them ours; the
rest are counted in one more line (a corrupt journal must not flood the log)."""
SHELL = "/bin/sh"
"""Every task runs as `SHELL -c COMMAND`: the leader's cmdline proves a journal record."""

_BAD = frozenset("/\\\0")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # nothing to escape, not hidden
_SAFE = frozenset(string.ascii_letters + string.digits + "-_.")
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_JOURNAL = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ATTEMPT = 10**14  # "<240-char id>@<attempt>" fits in a 255-byte file name
_START_ERRORS = (OSError, ValueError, TypeError, subprocess.SubprocessError)

_use_pidfd = hasattr(os, "pidfd_open")
"""Watch children with pidfds; cleared for good when the kernel (or a seccomp filter) says no."""


@dataclass(frozen=True)
class TaskResult:
    """How one launch ended; passed to `on_exit` exactly once per launch."""

    task_id: str
    attempt: int
    state: str  # "FINISHED" (exit 0), "KILLED" (via kill()/shutdown()), "FAILED" (anything else)
    exit_code: int | None  # asyncio's returncode (-N = signal N); None if nothing ran
    message: str  # e.g. "exited with code 3", "timed out after 2 s", "could not start: ..."
    progress: float  # 1.0 when FINISHED, else the last progress the task printed (or 0.0)


@dataclass(frozen=True)
class RunningTask:
    """A snapshot of a running task, e.g. for re-registering with a restarted master."""

    task_id: str
    attempt: int
    name: str
    pid: int | None  # None until the shell is spawned
    sandbox: Path | None  # None until the task id is checked
    progress: float


def sandbox_path(work_dir: str | os.PathLike[str], task_id: str, attempt: int) -> Path:
    """The sandbox of one attempt of a task. Raises ValueError for ids that could escape it.

    It is `<work_dir>/sandboxes/<escaped id>@<attempt>`. Characters outside [A-Za-z0-9._-]
    (so '@' too) are %-escaped, so distinct (id, attempt) pairs get distinct directories; ids
    with '/', '\\' or NUL, '.', '..' and empty ids are rejected outright.
    """
    return Path(_sandbox_dir(os.fspath(work_dir), task_id, attempt))


def _sandbox_dir(work_dir: str, task_id: str, attempt: int) -> str:
    """`sandbox_path` as a str, without pathlib (a few microseconds less per launch)."""
    if type(attempt) is int and 0 <= attempt < _MAX_ATTEMPT and type(task_id) is str \
            and _PLAIN_ID.fullmatch(task_id) and len(task_id) <= 240:
        return os.path.join(work_dir, "sandboxes", f"{task_id}@{attempt}")  # nothing to escape
    return os.path.join(work_dir, "sandboxes", f"{_sandbox_name(task_id, attempt)}@{attempt}")


def _legacy_sandbox_dir(work_dir: str, task_id: str, attempt: int) -> str:
    """Where slaves before the journal kept an attempt's sandbox: sandboxes/<id>/<attempt>/."""
    return os.path.join(work_dir, "sandboxes", _sandbox_name(task_id, attempt), str(attempt))


def _sandbox_name(task_id: str, attempt: int) -> str:
    """The escaped task id, validated (ValueError), for a sandbox's name."""
    if not isinstance(task_id, str) or task_id in ("", ".", "..") or _BAD & set(task_id):
        raise ValueError(
            f"task id {task_id!r} cannot name a sandbox: use a non-empty string other than "
            "'.' or '..' without '/', '\\' or NUL"
        )
    if type(attempt) is not int or not 0 <= attempt < _MAX_ATTEMPT:
        raise ValueError(f"attempt {attempt!r} must be a non-negative int below 10**14")
    name = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in task_id)
    if name.startswith("."):
        name = "%2E" + name[1:]  # no hidden directories
    if len(name) > 240:
        raise ValueError(f"task id {task_id[:40]!r}... is too long for a directory name")
    return name


@dataclass(eq=False)
class _Task:
    task_id: str
    attempt: int
    name: str
    sandbox: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    exit: asyncio.Future[int] | None = None  # the shell's returncode, once it is reaped
    pgid: int = 0
    started_at: float = 0.0
    reader: int = -1  # read-only fd on stdout, for tailing progress
    offset: int = 0  # how far `scanner` has read stdout
    scanner: ProgressScanner = field(default_factory=ProgressScanner)
    reported: float | None = None  # the progress poll_progress last returned
    kill_reason: str | None = None  # "killed" or "timeout"
    grace: asyncio.Future[Any] | None = None  # the SIGKILL timer, once SIGTERM was sent
    exited: bool = False  # the shell has exited: kill() is a no-op from here on
    record: dict[str, Any] = field(default_factory=dict)  # its start record in the journal

    def snapshot(self) -> RunningTask:
        pid, progress = (self.proc.pid if self.proc else None), self.scanner.last or 0.0
        sandbox = None if self.sandbox is None else Path(self.sandbox)
        return RunningTask(self.task_id, self.attempt, self.name, pid, sandbox, progress)


class Executor:
    """Launches, watches and kills tasks. Use from one event loop (the slave actor's)."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        on_exit: Callable[[TaskResult], object],
        *,
        kill_grace: float = 3.0,
        sleep: Sleep = asyncio.sleep,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        """`base_env` defaults to the slave's own os.environ (read at each launch)."""
        self.work_dir = Path(work_dir).absolute()
        self._work_dir = str(self.work_dir)
        self.kill_grace = kill_grace
        self._on_exit = on_exit
        self._sleep = sleep
        self._base_env = base_env
        self._tasks: dict[str, _Task] = {}
        self._runs: set[asyncio.Task[TaskResult]] = set()
        self._closed = False
        self._spawn_queue: deque[tuple[_Task, str, Mapping[str, str] | None,
                                       asyncio.Future[bool]]] = deque()
        self._pump_armed = False
        self._watcher: _ChildWatcher | None = None
        self._env_source: dict[bytes, bytes] | None = None  # os.environ as last filtered
        self._env_base: dict[str, str] = {}
        self._counts = {f"tasks_{k}": 0 for k in ("launched", "finished", "failed", "killed")}
        self._journal = -1  # fd of <work_dir>/tasks.journal, opened at the first record
        self._journal_size = 0  # bytes in it, as far as we know
        self._journal_limit = JOURNAL_COMPACT_AT  # compact past this size
        self._journal_torn = False  # the last append may have been cut short
        self._orphan_scans = 0  # kill_orphans calls under way: no compaction until they end

    # -- launching -------------------------------------------------------------------------

    def launch(
        self,
        task_id: str,
        command: str,
        *,
        name: str = "",
        attempt: int = 0,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> asyncio.Task[TaskResult]:
        """Start a task in the background; its result goes to `on_exit` (and the returned task).

        Must be called on the running loop. Anything that stops the task from starting (bad
        id, sandbox not creatable, bad timeout) becomes a FAILED result, not an exception.
        Raises ValueError only if `task_id` is still running here, RuntimeError after shutdown.
        """
        if self._closed:
            raise RuntimeError(f"cannot launch task {task_id!r}: the executor was shut down")
        if task_id in self._tasks:
            raise ValueError(
                f"task {task_id!r} is already running here (attempt "
                f"{self._tasks[task_id].attempt}); kill it and wait for its result first"
            )
        t = _Task(task_id, attempt, name)
        self._tasks[task_id] = t
        self._counts["tasks_launched"] += 1
        run = asyncio.get_running_loop().create_task(
            self._run(t, command, env, timeout), name=f"task {task_id}"
        )
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return run

    async def _run(
        self, t: _Task, command: str, env: Mapping[str, str] | None, timeout: float | None
    ) -> TaskResult:
        try:
            started = await self._start(t, command, env, timeout)
        except _START_ERRORS as e:
            return self._finish(t, "FAILED", None, f"could not start: {e}")
        if not started:
            return self._finish(t, "KILLED", None, "killed before it started")
        assert t.exit is not None
        waiter = t.exit
        timer = asyncio.ensure_future(self._sleep(timeout)) if timeout is not None else None
        try:
            if timer is not None:
                await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    t.kill_reason = t.kill_reason or "timeout"
                    self._terminate(t)
            rc = await waiter
        finally:
            waiter.cancel()  # if we were cancelled: the watcher still reaps the shell
            if timer is not None:
                timer.cancel()
        t.exited = True
        await self._reap_group(t)
        self._scan(t)
        t.scanner.flush()
        if t.kill_reason == "timeout" and timeout is not None:
            return self._finish(t, "FAILED", rc, f"timed out after {timeout:g} s")
        if t.kill_reason == "killed":
            return self._finish(t, "KILLED", rc, f"kill requested; {_describe(rc)}")
        return self._finish(t, "FINISHED" if rc == 0 else "FAILED", rc, _describe(rc))

    async def _start(
        self, t: _Task, command: str, env: Mapping[str, str] | None, timeout: float | None
    ) -> bool:
        """Set up the sandbox and spawn the shell; False if kill() came first."""
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"command {command!r} is empty; give a shell command line")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout {timeout!r} must be a positive number of seconds or None")
        t.sandbox = _sandbox_dir(self._work_dir, t.task_id, t.attempt)
        # Spawning is bounded: a launch of thousands of tasks must not hold the event loop
        # (and the slave's heartbeats) in fork/exec for seconds. The pump spawns in FIFO
        # order, MAX_CONCURRENT_SPAWNS per loop turn.
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._spawn_queue.append((t, command, env, turn))
        if not self._pump_armed:
            self._pump_armed = True
            loop.call_soon(self._pump)
        return await turn

    def _pump(self) -> None:
        """Spawn the next queued tasks; re-armed for the next loop turn while any are left."""
        queue = self._spawn_queue
        spawned: list[tuple[_Task, str]] = []
        for _ in range(min(MAX_CONCURRENT_SPAWNS, len(queue))):
            t, command, env, turn = queue.popleft()
            if turn.cancelled():  # its _run was cancelled while it waited
                continue
            try:
                started = self._spawn(t, command, env)
            except Exception as e:  # _run decides which ones mean "could not start"
                turn.set_exception(e)
            else:
                turn.set_result(started)
                if started:
                    spawned.append((t, command))
        # After the whole batch: reading /proc/<pid>/stat of a child still inside execve()
        # waits for it, by then it has (usually) finished.
        for t, command in spawned:
            try:
                self._record_start(t, command)
            except Exception:  # never stop the pump: the queue behind it would stall
                log.exception("task %s: could not record its start", t.task_id)
        if queue:
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._pump_armed = False

    def _spawn(self, t: _Task, command: str, env: Mapping[str, str] | None) -> bool:
        """Create the sandbox, fork/exec the shell and start watching it; on the loop."""
        if t.kill_reason is not None:  # kill() came while it waited for its turn
            return False
        sandbox = t.sandbox
        assert sandbox is not None
        out, err, t.reader = _prepare_sandbox(sandbox)
        try:
            # A re-run of the same attempt appends to its logs; progress starts at the new end.
            t.offset = os.fstat(t.reader).st_size
            # vfork + exec (no preexec_fn): cheap even for a big slave process.
            t.proc = subprocess.Popen(
                (SHELL, "-c", command), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=sandbox, env=self._env(t, env), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(out)
            os.close(err)
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = _ChildWatcher(loop)
        t.exit = self._watcher.watch(t.proc)
        t.pgid, t.started_at = t.proc.pid, time.time()
        return True

    def _record_start(self, t: _Task, command: str) -> None:
        """Journal the start for `kill_orphans`, with what proves the group ours later: the
        leader's start time (boot-relative, so pid reuse shows) and the digests of the command
        and of the leader's cmdline as it is now (a shell that already exec'd its command)."""
        cmdline = _proc_cmdline(t.pgid)
        t.record = {
            "event": "start", "task_id": t.task_id, "attempt": t.attempt, "name": t.name,
            "sandbox": t.sandbox, "command": command[:MAX_RECORDED_COMMAND],
            "command_sha256": _sha256(os.fsencode(command)),
            "cmdline_sha256": None if cmdline is None else _sha256(cmdline),
            "pid": t.pgid, "pgid": t.pgid, "start_ticks": _start_ticks(t.pgid),
            "started_at": t.started_at,
        }  # fmt: skip
        self._journal_append(t.record)

    # -- the journal (see the module docstring) --------------------------------------------

    def _journal_append(self, record: dict[str, Any]) -> None:
        """Append one record; a failure only weakens orphan clean-up after a crash."""
        line = json.dumps(record).encode() + b"\n"  # one line: json escapes newlines
        try:
            if self._journal < 0:
                self._open_journal()
            if self._journal_torn:  # end the torn line, or this record would be lost with it
                line = b"\n" + line
            self._journal_torn = True
            view = memoryview(line)
            while view:
                view = view[os.write(self._journal, view) :]
            self._journal_torn = False
            self._journal_size += len(line)
        except OSError as e:
            log.warning("task %s: could not write to the task journal: %s",
                        record.get("task_id"), e)
            return
        if self._journal_size > self._journal_limit and not self._orphan_scans:
            try:
                self._compact_journal()
            except OSError as e:
                log.warning("could not compact the task journal: %s", e)
                self._journal_limit = 2 * self._journal_size  # do not retry at every record

    def _open_journal(self) -> None:
        fd = os.open(os.path.join(self._work_dir, JOURNAL), _JOURNAL, 0o644)
        try:
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._journal, self._journal_size, self._journal_torn = fd, size, torn

    def _compact_journal(self) -> None:
        """Replace the journal by one with only the running tasks' start records.

        Atomic (a new file renamed over it), so a crash at any point leaves a journal with
        every running task's start; on the loop, so no record of ours can slip in between.
        """
        data = b"".join(json.dumps(t.record).encode() + b"\n"
                        for t in self._tasks.values() if t.record)
        path = os.path.join(self._work_dir, JOURNAL)
        tmp = path + ".tmp"
        fd = os.open(tmp, _JOURNAL | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self._journal >= 0:
            os.close(self._journal)
        self._journal, self._journal_size, self._journal_torn = fd, len(data), False
        self._journal_limit = max(JOURNAL_COMPACT_AT, 2 * len(data))

    def _env(self, t: _Task, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The slave's env minus LIBPROCESS_* (a libproc task must not grab the slave's port)."""
        if self._base_env is not None:
            env = _task_env(self._base_env)
        else:  # os.environ, re-filtered only when it changed (filtering costs ~50 us)
            source = getattr(os.environ, "_data", None)
            if not isinstance(source, dict):
                env = _task_env(os.environ)
            else:
                if source != self._env_source:
                    self._env_base = _task_env(os.environ)
                    self._env_source = dict(source)
                env = self._env_base.copy()
        env.update(extra or {})
        env.update(TASK_ID=t.task_id, TASK_NAME=t.name, TASK_ATTEMPT=str(t.attempt))
        env["SANDBOX"] = t.sandbox or ""
        return env

    def _finish(self, t: _Task, state: str, rc: int | None, message: str) -> TaskResult:
        progress = 1.0 if state == "FINISHED" else (t.scanner.last or 0.0)
        result = TaskResult(t.task_id, t.attempt, state, rc, message, progress)
        if t.record:  # the group is gone, so kill_orphans needs its start record no more
            self._journal_append({
                "event": "end", "task_id": t.task_id, "attempt": t.attempt, "pgid": t.pgid,
                "state": state, "exit_code": rc, "finished_at": time.time(),
            })  # fmt: skip
        if t.reader >= 0:
            os.close(t.reader)
            t.reader = -1
        if self._tasks.get(t.task_id) is t:
            del self._tasks[t.task_id]
        self._counts[f"tasks_{state.lower()}"] += 1
        try:
            self._on_exit(result)
        except Exception:  # a broken callback must not break the executor's bookkeeping
            log.exception("on_exit raised for task %s", t.task_id)
        return result

    # -- killing ---------------------------------------------------------------------------

    def kill(self, task_id: str) -> bool:
        """SIGTERM the task's process group, SIGKILL after the grace period; result via on_exit.

        False (and nothing happens) if the task is unknown or its shell has already exited; its
        result, if any, is then already on its way to on_exit.
        """
        t = self._tasks.get(task_id)
        if t is None or t.exited:
            return False
        t.kill_reason = t.kill_reason or "killed"
        if t.proc is not None:
            self._terminate(t)
        return True

    def _terminate(self, t: _Task) -> None:
        if t.grace is None:
            _signal_group(t.pgid, signal.SIGTERM)
            t.grace = asyncio.ensure_future(self._escalate(t))

    async def _escalate(self, t: _Task) -> None:
        await self._sleep(self.kill_grace)
        _signal_group(t.pgid, signal.SIGKILL)

    async def _reap_group(self, t: _Task) -> None:
        """After the shell exits: stragglers in its group get what is left of the grace."""
        # Usually the group died with its shell: kill(0) says so at once, no /proc scan.
        alive = _group_exists(t.pgid) and await asyncio.to_thread(_group_alive, t.pgid)
        if t.grace is None:
            if alive:
                _signal_group(t.pgid, signal.SIGKILL)
        elif alive:
            await t.grace
        else:
            t.grace.cancel()  # the group is gone; its pgid may be reused, never signal it again

    async def shutdown(self) -> None:
        """Kill every running task (SIGTERM, SIGKILL after grace) and wait for their results.

        Later launches raise RuntimeError.
        """
        self._closed = True
        for task_id in list(self._tasks):
            self.kill(task_id)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.close_if_idle()
        if self._journal >= 0 and not self._tasks:
            os.close(self._journal)
            self._journal = -1

    async def kill_orphans(self) -> list[str]:
        """`kill_orphans(self.work_dir)`, sparing the tasks this executor runs; then compacts
        the journal (the slave calls this once, at start-up).
        """
        mine = {t.pgid for t in self._tasks.values() if t.pgid}
        # Only the journal as it is now: whatever we append while it is read is ours.
        if self._journal >= 0:
            known = self._journal_size
        else:
            try:
                known = os.stat(os.path.join(self._work_dir, JOURNAL)).st_size
            except OSError:
                known = 0
        self._orphan_scans += 1  # it reads the first `known` bytes of this very file
        try:
            killed = await _kill_orphans(self.work_dir, frozenset(mine), self.kill_grace,
                                         self._sleep, known)
        finally:
            self._orphan_scans -= 1
        if not self._orphan_scans and os.path.exists(os.path.join(self._work_dir, JOURNAL)):
            try:
                self._compact_journal()
            except OSError as e:
                log.warning("could not compact the task journal: %s", e)
        return killed

    # -- progress, logs, counters ----------------------------------------------------------

    def poll_progress(self) -> dict[str, float]:
        """Tail each running task's stdout; {task_id: progress} for those that changed.

        Call once per report interval. Reads at most MAX_TAIL bytes per task, on the loop.
        """
        changed: dict[str, float] = {}
        for t in self._tasks.values():
            if t.exited:
                continue
            self._scan(t)
            if t.scanner.last is not None and t.scanner.last != t.reported:
                t.reported = changed[t.task_id] = t.scanner.last
        return changed

    def progress(self) -> dict[str, float]:
        """{task_id: last progress seen} for every running task (0.0 before any); no I/O."""
        return {tid: t.scanner.last or 0.0 for tid, t in self._tasks.items()}

    def running(self) -> list[RunningTask]:
        """Snapshots of the running tasks (launched, result not yet reported)."""
        return [t.snapshot() for t in self._tasks.values()]

    def _scan(self, t: _Task) -> None:
        if t.reader < 0:
            return
        try:
            size = os.fstat(t.reader).st_size
            if size < t.offset:  # the task truncated its own stdout
                t.offset = 0
                t.scanner.skip_to_next_line()
            if size - t.offset > MAX_TAIL:
                t.offset = size - MAX_TAIL
                t.scanner.skip_to_next_line()
            while t.offset < size:
                data = os.pread(t.reader, size - t.offset, t.offset)
                if not data:
                    break
                t.offset += len(data)
                t.scanner.feed(data)
        except OSError as e:
            log.warning("task %s: cannot read stdout for progress: %s", t.task_id, e)

    def read_log(
        self, task_id: str, attempt: int, stream: Stream, offset: int = 0, limit: int = 65536
    ) -> tuple[bytes, int, bool]:
        """Read a task's log from `offset`: (data, new_offset, eof_known).

        For an HTTP endpoint behind `cluster logs -f`: works for running and finished tasks.
        `eof_known` is True once the reader has everything (the attempt is not running here
        and `new_offset` is the file's end). Reads at most min(limit, MAX_READ) bytes.
        Raises ValueError for a bad id (path traversal), stream, offset or limit, and
        FileNotFoundError when that attempt has no sandbox here.
        """
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream {stream!r} must be 'stdout' or 'stderr'")
        if type(offset) is not int or offset < 0 or type(limit) is not int or limit < 0:
            raise ValueError(f"offset {offset!r} and limit {limit!r} must be non-negative ints")
        path = os.path.join(_sandbox_dir(self._work_dir, task_id, attempt), stream)
        t = self._tasks.get(task_id)
        running = t is not None and t.attempt == attempt
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            if running:  # launched, sandbox not set up yet
                return b"", offset, False
            try:  # run by a slave from before the flat sandboxes/<id>@<attempt>/ layout?
                fd = os.open(os.path.join(_legacy_sandbox_dir(self._work_dir, task_id, attempt),
                                          stream), _READ)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"no {stream} for task {task_id!r} attempt {attempt} in {self.work_dir}; "
                    "check the task id and attempt, or ask the slave that ran it"
                ) from None
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, min(limit, MAX_READ), offset) if offset < size else b""
        finally:
            os.close(fd)
        new_offset = offset + len(data)
        return data, new_offset, not running and new_offset >= size

    def counters(self) -> dict[str, int]:
        """Counters for /vars: tasks_launched, _running, _finished, _failed, _killed."""
        return {**self._counts, "tasks_running": len(self._tasks)}


async def kill_orphans(
    work_dir: str | os.PathLike[str],
    *,
    exclude_pgids: Collection[int] = (),
    grace: float = 3.0,
    sleep: Sleep = asyncio.sleep,
) -> list[str]:
    """Kill process groups left running in `work_dir`'s sandboxes by an earlier slave.

    Call when a slave restarts on the same work dir, before launching. Uses the journal
    (starts without an end; torn or garbled lines are skipped) and any sandbox's task.json
    left by slaves before the journal. Acts only on proof (`orphan_unproven`): a group is
    signalled only when its live leader has the recorded start time and command; any other
    record that names a live group is reported in one WARN line and left alone. SIGTERM, then
    SIGKILL after `grace`. Returns the task ids whose groups were signalled. Does not rewrite
    the journal (an executor may hold it open): `Executor.kill_orphans` does.
    """
    return await _kill_orphans(work_dir, frozenset(exclude_pgids), grace, sleep, None)


async def _kill_orphans(work_dir: str | os.PathLike[str], exclude: frozenset[int],
                        grace: float, sleep: Sleep, journal_bytes: int | None) -> list[str]:
    found = await asyncio.to_thread(_find_orphans, Path(work_dir), exclude, journal_bytes)
    hit = [(tid, pgid) for tid, pgid in found if _signal_group(pgid, signal.SIGTERM)]
    alive = [pgid for _, pgid in hit]
    for _ in range(10):  # poll, so that groups that exit promptly do not cost the whole grace
        if not alive:
            break
        await sleep(grace / 10)
        alive = await asyncio.to_thread(_alive_groups, alive)
    for pgid in alive:
        _signal_group(pgid, signal.SIGKILL)
    return list(dict.fromkeys(tid for tid, _ in hit))


# -- helpers (blocking ones run in a worker thread) ------------------------------------------


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"


def _task_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` minus LIBPROCESS_*, with PYTHONUNBUFFERED=1 unless set."""
    env = {k: v for k, v in base.items() if not k.startswith("LIBPROCESS_")}
    env.setdefault("PYTHONUNBUFFERED", "1")  # else a Python task's PROGRESS lines lag
    return env


def _prepare_sandbox(sandbox: str) -> tuple[int, int, int]:
    """Create the sandbox; open stdout/stderr for the child and stdout for tailing."""
    try:
        os.mkdir(sandbox)
    except FileExistsError:  # a re-run of the same attempt
        pass
    except FileNotFoundError:  # no sandboxes/ yet
        os.makedirs(os.path.dirname(sandbox), exist_ok=True)
        try:
            os.mkdir(sandbox)
        except FileExistsError:
            pass
    fds: list[int] = []
    try:
        for name, flags in (("stdout", _WRITE), ("stderr", _WRITE), ("stdout", _READ)):
            fds.append(os.open(os.path.join(sandbox, name), flags, 0o644))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1], fds[2]


# -- watching children: pidfds in one epoll set on the loop, else a thread per child -------


class _ChildWatcher:
    """Reaps the executor's children on one loop and reports their returncodes.

    Each child's pidfd goes into a private epoll set, which is itself a single reader on the
    loop: one epoll_ctl per child instead of asyncio's add_reader/remove_reader (and no
    thread per child, as asyncio's ThreadedChildWatcher has). Where pidfds are unavailable
    (Linux < 5.3, seccomp, a loop without add_reader) a daemon thread per child waits instead.
    A child is reaped whatever becomes of its future: cancelling it only drops the result.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = None
        self._children: dict[int, tuple[subprocess.Popen[bytes], asyncio.Future[int]]] = {}

    def watch(self, proc: subprocess.Popen[bytes]) -> asyncio.Future[int]:
        """A future for `proc`'s returncode (-N if killed by signal N), set on the loop."""
        exit_code: asyncio.Future[int] = self.loop.create_future()
        if not (_use_pidfd and self._watch_pidfd(proc, exit_code)):
            threading.Thread(target=_wait_in_thread, args=(self.loop, proc, exit_code),
                             name=f"wait-{proc.pid}", daemon=True).start()
        return exit_code

    def _watch_pidfd(self, proc: subprocess.Popen[bytes], exit_code: asyncio.Future[int]) -> bool:
        global _use_pidfd
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):  # old kernel or seccomp
                log.info("pidfd_open unavailable (%s): one waiting thread per task instead", e)
                _use_pidfd = False
            else:  # e.g. EMFILE: for this child only
                log.warning("pidfd_open(%d) failed (%s): waiting in a thread", proc.pid, e)
            return False
        try:
            if self._epoll is None:
                epoll = select.epoll()
                try:
                    self.loop.add_reader(epoll.fileno(), self._ready)
                except BaseException:
                    epoll.close()
                    raise
                self._epoll = epoll
            self._epoll.register(pidfd, select.EPOLLIN)
        except (NotImplementedError, OSError, ValueError) as e:  # e.g. a loop without readers
            os.close(pidfd)
            log.info("cannot watch pidfds on this loop (%r): waiting in threads", e)
            _use_pidfd = False
            return False
        self._children[pidfd] = (proc, exit_code)
        return True

    def _ready(self) -> None:
        assert self._epoll is not None
        for pidfd, _ in self._epoll.poll(0):
            proc, exit_code = self._children[pidfd]
            rc = proc.poll()  # waitpid(WNOHANG); sets proc.returncode
            if rc is None:  # a readable pidfd means it exited: cannot happen
                continue
            del self._children[pidfd]
            self._epoll.unregister(pidfd)
            os.close(pidfd)
            _set_exit(exit_code, rc)

    def close_if_idle(self) -> None:
        """Give the epoll set back unless children are still watched."""
        if self._epoll is not None and not self._children:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


def _wait_in_thread(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes],
                    exit_code: asyncio.Future[int]) -> None:
    rc = proc.wait()
    try:
        loop.call_soon_threadsafe(_set_exit, exit_code, rc)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _set_exit(exit_code: asyncio.Future[int], rc: int) -> None:
    if not exit_code.done():
        exit_code.set_result(rc)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False if it is gone. Never group 0 or 1 (ours, init's)."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as e:
        log.warning("cannot signal process group %d: %s", pgid, e)
        return False


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), or None if unavailable."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)  # one read: the kernel renders the whole line at once
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw[raw.rfind(b")") + 2 :].decode().split()


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def _group_exists(pgid: int) -> bool:
    """Does the group have any member, zombies included? One kill(0), no /proc scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """Does the group have a live member? Zombies do not count (they are already dead)."""
    if not _group_exists(pgid):
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: trust kill(0), zombies included
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(entry.name)
            if stat and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
                return True
    return False


def _alive_groups(pgids: list[int]) -> list[int]:
    return [pgid for pgid in pgids if _group_alive(pgid)]


def _find_orphans(work_dir: Path, exclude: frozenset[int],
                  journal_bytes: int | None = None) -> list[tuple[str, int]]:
    """(task id, pgid) of each unended record whose live group leader proves it ours.

    Records without that proof are named in one WARN line each (at most
    MAX_UNPROVEN_WARNINGS, then a count) and left alone; records whose group is gone are
    dropped quietly (the task ended while no slave watched).
    """
    candidates: dict[int, dict[str, Any]] = {}  # pgid -> its first unended start record
    for record in _unended_starts(work_dir / JOURNAL, journal_bytes):
        candidates.setdefault(record["pgid"], record)
    for record_path in _legacy_records(work_dir / "sandboxes"):
        try:
            record = json.loads(record_path.read_text())
            pgid = record["pgid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if type(pgid) is int and "finished_at" not in record:
            candidates.setdefault(pgid, record)
    found, unproven = [], []
    for pgid, record in candidates.items():
        if pgid <= 1 or pgid in exclude:
            continue
        reason = orphan_unproven(record, pgid, _live_leader(pgid))
        if reason is None:
            found.append((str(record["task_id"]), pgid))
        elif reason != GONE and _group_alive(pgid):
            unproven.append((record, pgid, reason))
    for record, pgid, reason in unproven[:MAX_UNPROVEN_WARNINGS]:
        log.warning("orphan clean-up: left process group %d alone (journal names task %r): "
                    "%s, so nothing proves this slave started it", pgid,
                    str(record.get("task_id"))[:100], reason)
    if len(unproven) > MAX_UNPROVEN_WARNINGS:
        log.warning("orphan clean-up: left %d more unproven process groups alone",
                    len(unproven) - MAX_UNPROVEN_WARNINGS)
    return found


GONE = "its leader is gone"
"""`orphan_unproven`'s reason when the recorded leader no longer exists (or is a zombie)."""


@dataclass(frozen=True)
class LiveLeader:
    """What /proc says of a live process that a journal record names as a group leader."""

    start_ticks: int  # /proc/<pid>/stat field 22: clock ticks after boot
    pgrp: int  # its process group
    cmdline: bytes  # /proc/<pid>/cmdline, NUL-separated arguments


def orphan_unproven(record: Mapping[str, Any], pgid: int, live: LiveLeader | None) -> str | None:
    """None when `record` proves that this slave started the live group `pgid`, else why not.

    Pure. Proof needs all of: the record names `pgid` as pid and pgid; the live leader still
    leads that group; its start time (boot-relative ticks) equals the recorded one; and its
    cmdline is `SHELL -c <command>` for the recorded command (checked against the command's
    digest when there is one) or has the digest recorded at the start (a shell that exec'd
    its command before the record was taken). A leaderless group proves nothing.
    """
    if live is None:
        return GONE
    ticks = record.get("start_ticks")
    if type(ticks) is not int:
        return "the record has no start time"
    if record.get("pid", pgid) != pgid or live.pgrp != pgid:
        return f"process {pgid} does not lead process group {pgid} as recorded"
    if live.start_ticks != ticks:
        return (f"process {pgid} started at tick {live.start_ticks}, the record says {ticks} "
                "(the pid was reused)")
    digest = _sha256(live.cmdline)
    if digest == record.get("cmdline_sha256"):
        return None
    command = record.get("command")
    if isinstance(command, str):
        try:
            argv = os.fsencode(command)
        except UnicodeError:
            return "the recorded command cannot be encoded"
        if record.get("command_sha256", _sha256(argv)) == _sha256(argv) \
                and live.cmdline == b"\0".join((os.fsencode(SHELL), b"-c", argv)) + b"\0":
            return None
    if "command" not in record and "cmdline_sha256" not in record:
        return "the record has no command"
    return f"process {pgid} runs another command than the record's"


def _live_leader(pid: int) -> LiveLeader | None:
    """/proc's view of `pid` for `orphan_unproven`; None if it is gone or a zombie."""
    stat = _proc_stat(pid)
    if not stat or stat[0] in ("Z", "X"):
        return None
    cmdline = _proc_cmdline(pid)
    try:
        return LiveLeader(int(stat[19]), int(stat[2]), cmdline or b"")
    except (ValueError, IndexError):
        return None


def _proc_cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _legacy_records(sandboxes: Path) -> list[Path]:
    """task.json files left by a slave from before the journal, upgraded while tasks ran:
    `sandboxes/<id>/<attempt>/task.json` (sandboxes named `<id>@<attempt>` are not looked in).
    """
    try:
        with os.scandir(sandboxes) as entries:
            dirs = [e.name for e in entries if "@" not in e.name and e.is_dir()]
    except OSError:
        return []
    return sorted(p for name in dirs for p in (sandboxes / name).glob("*/task.json"))


def _unended_starts(journal: Path, size: int | None = None) -> list[dict[str, Any]]:
    """The start records that no end record follows in the journal (its first `size` bytes,
    or all of it), in order; skips torn and garbled lines."""
    starts: dict[tuple[str, int, int], dict[str, Any]] = {}
    try:
        with open(journal, "rb") as f:
            lines = f.read(-1 if size is None else size).split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("cannot read the task journal %s: %s", journal, e)
        return []
    for line in lines:
        try:
            record = json.loads(line)
            key = (str(record["task_id"]), int(record["attempt"]), record["pgid"])
            event = record["event"]
        except (ValueError, KeyError, TypeError):  # torn or garbled (UnicodeError too)
            continue
        if type(key[2]) is not int:  # a pgid of 12.7 or "12" was never written by us
            continue
        if event == "start":
            starts[key] = record
        elif event == "end":
            starts.pop(key, None)
    return list(starts.values())
