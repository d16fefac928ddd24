"""Task executor: runs each task as `/bin/sh -c COMMAND` in its own sandbox, process group and
(with cgroups isolation) cgroup, and ends every one of its processes when it is over.

The slave actor owns one Executor and calls it on its event loop, which nothing here blocks
for long. The per-task path uses no threads without cgroups (on a busy slave every thread hop
costs GIL hand-offs): the sandbox (`slave.sandbox`) and the journal records
(`slave.journal`) are written on the loop, the shell is forked (`slave.spawn`) at most
MAX_CONCURRENT_SPAWNS per loop turn, and its exit is watched through a pidfd in one epoll
set. With cgroups the task's cgroup is made and the shell put in it on the loop before it
runs the command (a few mkdirs and writes); killing through the cgroup, usage sampling and
removing the cgroup run in a worker thread, as do /proc scans. Contracts the slave can rely
on:

- A task is its process group and its container (`slave.isolation`): kill = SIGTERM to the
  group and to every process of the container, then after `kill_grace` SIGKILL to all of
  them (with cgroups: freezer or cgroup.kill, so escaped children -- setsid, double fork --
  go too; without: those still carrying the task's SANDBOX in their environment, best
  effort). When the shell exits, whatever is left of the task is SIGKILLed (without cgroups:
  what is left in its group, unless it was killed).
- A task over its memory limit (the kernel's OOM killer struck in its cgroup) or stuck at its
  process limit ends FAILED with a message saying so, whatever its exit code.
- Every launch ends in exactly one `on_exit(TaskResult)` call on the loop, even one that
  could not start. `exit_code` is Popen's (and asyncio's) returncode: -N if the shell died of
  signal N (a command the shell ran that died of signal N shows as 128+N); None if nothing
  ran. `usage` is the task's final usage (None if nothing ran).
- Timers (timeout, kill grace) go through the injected `sleep`, so a pausable clock can drive
  them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slave import procfs
from slave.isolation import Container, IsolationError, Isolator, Limits, NoIsolation, Usage
from slave.journal import JOURNAL, Journal, end_record, start_record, unended_starts
from slave.logs import ProgressTail, Stream, read_log
from slave.orphans import kill_orphans
from slave.sandbox import prepare_sandbox, sandbox_dir, sandbox_path
from slave.spawn import ChildWatcher, describe, release, spawn_shell, task_env

__all__ = ["Executor", "RunningTask", "TaskResult", "kill_orphans", "sandbox_path"]

log = logging.getLogger("slave.executor")

Sleep = Callable[[float], Awaitable[Any]]

MAX_CONCURRENT_SPAWNS = 16
"""Most tasks set up and forked in one turn of the event loop; the rest wait their turn (FIFO),
so that a launch of thousands of tasks leaves the loop free for I/O (heartbeats) between
batches."""
_START_ERRORS = (OSError, ValueError, TypeError, ArithmeticError, subprocess.SubprocessError,
                 IsolationError)


@dataclass(frozen=True)
class TaskResult:
    """How one launch ended; passed to `on_exit` exactly once per launch."""

    task_id: str
    attempt: int
    state: str  # "FINISHED" (exit 0), "KILLED" (via kill()/shutdown()), "FAILED" (anything else)
    exit_code: int | None  # asyncio's returncode (-N = signal N); None if nothing ran
    message: str  # e.g. "exited with code 3", "timed out after 2 s", "could not start: ..."
    progress: float  # 1.0 when FINISHED, else the last progress the task printed (or 0.0)
    usage: Usage | None = field(default=None, compare=False)  # what it used in all


@dataclass(frozen=True)
class RunningTask:
    """A snapshot of a running task, e.g. for re-registering with a restarted master."""

    task_id: str
    attempt: int
    name: str
    pid: int | None  # None until the shell is spawned
    sandbox: Path | None  # None until the task id is checked
    progress: float


@dataclass(eq=False)
class _Task:
    task_id: str
    attempt: int
    name: str
    limits: Limits
    sandbox: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    exit: asyncio.Future[int] | None = None  # the shell's returncode, once it is reaped
    pgid: int = 0
    started_at: float = 0.0
    tail: ProgressTail = field(default_factory=ProgressTail)
    reported: float | None = None  # the progress poll_progress last returned
    kill_reason: str | None = None  # "killed", "timeout" or "limit"
    limit_message: str = ""  # with kill_reason "limit": which limit
    grace: asyncio.Future[Any] | None = None  # SIGTERM sent: the SIGKILL to come
    exited: bool = False  # the shell has exited: kill() is a no-op from here on
    record: dict[str, Any] = field(default_factory=dict)  # its start record in the journal
    container: Container | None = None
    usage: Usage | None = None  # the last sample
    reported_usage: Usage | None = None  # the sample poll_usage last returned

    def snapshot(self) -> RunningTask:
        pid, progress = (self.proc.pid if self.proc else None), self.tail.scanner.last or 0.0
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
        isolator: Isolator | None = None,
    ) -> None:
        """`base_env` defaults to the slave's own os.environ (read at each launch);
        `isolator` to no isolation."""
        self.work_dir = Path(work_dir).absolute()
        self._work_dir = str(self.work_dir)
        self.kill_grace = kill_grace
        self.isolator = isolator or NoIsolation()
        self._cgroups = self.isolator.mode == "cgroups"
        self._on_exit = on_exit
        self._sleep = sleep
        self._base_env = base_env
        self._tasks: dict[str, _Task] = {}
        self._runs: set[asyncio.Task[TaskResult]] = set()
        self._closed = False
        self._spawn_queue: deque[tuple[_Task, str, Mapping[str, str] | None,
                                       asyncio.Future[bool]]] = deque()
        self._pump_armed = False
        self._recovering = False  # kill_orphans cleans up cgroups: spawns wait until it is done
        self._watcher: ChildWatcher | None = None
        self._env_source: dict[bytes, bytes] | None = None  # os.environ as last filtered
        self._env_base: dict[str, str] = {}
        self._counts = {f"tasks_{k}": 0 for k in ("launched", "finished", "failed", "killed")}
        self._counts["tasks_limit_exceeded"] = 0
        self._journal = Journal(self._work_dir)
        self._orphan_scans = 0  # kill_orphans calls under way: no compaction until they end
        self.interrupted: list[str] = []  # sandboxes of tasks an earlier slave left running
        self._sampling = False

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
        limits: Limits | None = None,
    ) -> asyncio.Task[TaskResult]:
        """Start a task in the background; its result goes to `on_exit` (and the returned task).

        Must be called on the running loop. Anything that stops the task from starting (bad
        id, sandbox or cgroup not creatable, bad timeout) becomes a FAILED result, not an
        exception. `limits` (cpus, mem, pids) are enforced with cgroups isolation; a missing
        pids limit is the isolator's `--task-pids-max`. Raises ValueError only if `task_id`
        is still running here, RuntimeError after shutdown.
        """
        if self._closed:
            raise RuntimeError(f"cannot launch task {task_id!r}: the executor was shut down")
        if task_id in self._tasks:
            raise ValueError(
                f"task {task_id!r} is already running here (attempt "
                f"{self._tasks[task_id].attempt}); kill it and wait for its result first"
            )
        limits = limits or Limits()
        if limits.pids_max is None and self.isolator.pids_max:
            limits = Limits(limits.cpus, limits.mem_mib, self.isolator.pids_max)
        t = _Task(task_id, attempt, name, limits)
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
        violation = await self._wrap_up(t)
        t.tail.scan(t.task_id)
        t.tail.scanner.flush()
        if t.kill_reason == "killed":
            return self._finish(t, "KILLED", rc, f"kill requested; {describe(rc)}")
        if violation or t.kill_reason == "limit":
            self._counts["tasks_limit_exceeded"] += 1
            return self._finish(t, "FAILED", rc, violation or t.limit_message)
        if t.kill_reason == "timeout" and timeout is not None:
            return self._finish(t, "FAILED", rc, f"timed out after {timeout:g} s")
        return self._finish(t, "FINISHED" if rc == 0 else "FAILED", rc, describe(rc))

    async def _start(
        self, t: _Task, command: str, env: Mapping[str, str] | None, timeout: float | None
    ) -> bool:
        """Set up the sandbox and spawn the shell; False if kill() came first."""
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"command {command!r} is empty; give a shell command line")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout {timeout!r} must be a positive number of seconds or None")
        t.sandbox = sandbox_dir(self._work_dir, t.task_id, t.attempt)
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
        if self._recovering:  # kill_orphans re-arms it: a new task's cgroup must not be
            self._pump_armed = False  # taken for a predecessor's and killed
            return
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
                t.record = start_record(t.task_id, t.attempt, t.name, t.sandbox, command,
                                        t.pgid, t.started_at,
                                        t.container.name if self._cgroups and t.container
                                        else None)
                self._journal_append(t.record)
            except Exception:  # never stop the pump: the queue behind it would stall
                log.exception("task %s: could not record its start", t.task_id)
        if queue:
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._pump_armed = False

    def _spawn(self, t: _Task, command: str, env: Mapping[str, str] | None) -> bool:
        """Create the sandbox (and cgroup), fork/exec the shell, start watching it; on the loop."""
        if t.kill_reason is not None:  # kill() came while it waited for its turn
            return False
        sandbox = t.sandbox
        assert sandbox is not None
        out, err, reader = prepare_sandbox(sandbox)
        t.tail.start(reader)
        try:
            container = self.isolator.create(os.path.basename(sandbox), t.limits, sandbox)
            try:
                proc, gate = spawn_shell(command, sandbox, out, err, self._env(t, env),
                                         gated=self._cgroups)
            except BaseException:
                container.destroy()
                raise
        finally:
            os.close(out)
            os.close(err)
        try:
            container.attach(proc.pid)
        except IsolationError:
            if gate >= 0:
                release(gate, go=False)  # it exits 125 without running the command
            proc.wait()
            container.destroy()
            raise
        if gate >= 0:
            release(gate, go=True)
        t.proc, t.container = proc, container
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = ChildWatcher(loop)
        t.exit = self._watcher.watch(proc)
        t.pgid, t.started_at = proc.pid, time.time()
        return True

    def _journal_append(self, record: dict[str, Any]) -> None:
        if self._journal.append(record) and not self._orphan_scans:
            self._journal.compact(t.record for t in self._tasks.values() if t.record)

    def _env(self, t: _Task, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The slave's env minus LIBPROCESS_* (a libproc task must not grab the slave's port)."""
        if self._base_env is not None:
            env = task_env(self._base_env)
        else:  # os.environ, re-filtered only when it changed (filtering costs ~50 us)
            source = getattr(os.environ, "_data", None)
            if not isinstance(source, dict):
                env = task_env(os.environ)
            else:
                if source != self._env_source:
                    self._env_base = task_env(os.environ)
                    self._env_source = dict(source)
                env = self._env_base.copy()
        env.update(extra or {})
        env.update(TASK_ID=t.task_id, TASK_NAME=t.name, TASK_ATTEMPT=str(t.attempt))
        env["SANDBOX"] = t.sandbox or ""  # also how isolation "none" finds escaped processes
        return env

    def _finish(self, t: _Task, state: str, rc: int | None, message: str) -> TaskResult:
        progress = 1.0 if state == "FINISHED" else (t.tail.scanner.last or 0.0)
        result = TaskResult(t.task_id, t.attempt, state, rc, message, progress, t.usage)
        if t.record:  # the group is gone, so kill_orphans needs its start record no more
            self._journal_append(end_record(t.task_id, t.attempt, t.pgid, state, rc,
                                            time.time()))
        t.tail.close()
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
        """SIGTERM every process of the task, SIGKILL after the grace period; result via on_exit.

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
            procfs.signal_group(t.pgid, signal.SIGTERM)
            t.grace = asyncio.ensure_future(self._escalate(t))

    async def _escalate(self, t: _Task) -> None:
        if t.container is not None:  # the processes that left the group
            await asyncio.to_thread(t.container.signal_all, signal.SIGTERM)
        await self._sleep(self.kill_grace)
        await self._kill_everything(t)

    async def _kill_everything(self, t: _Task) -> None:
        if not (t.exited and self._cgroups):  # once the leader is reaped its pgid may be
            procfs.signal_group(t.pgid, signal.SIGKILL)  # reused: the cgroup holds the rest
        if t.container is not None:
            try:
                await asyncio.to_thread(t.container.kill_all)
            except IsolationError as e:
                log.warning("task %s: could not kill all its processes: %s", t.task_id, e)

    async def _wrap_up(self, t: _Task) -> str | None:
        """After the shell exits: end what is left of the task, take its final usage, release
        its container; the limit it broke, if any."""
        c = t.container
        if c is None:
            return None
        rusage = self._watcher.pop_rusage(t.pgid) if self._watcher else None
        if self._cgroups:
            if t.grace is not None and not t.grace.done():
                if c.pids():
                    await t.grace  # killed, and something is still there: it has its grace
                t.grace.cancel()  # never signal its pgid again: it may be reused
            return await asyncio.to_thread(self._release, t, c, rusage)
        # Without cgroups: usually the group died with its shell (kill(0) says so at once).
        alive = procfs.group_exists(t.pgid) and await asyncio.to_thread(procfs.group_alive,
                                                                        t.pgid)
        if t.grace is None:
            if alive:
                procfs.signal_group(t.pgid, signal.SIGKILL)
        elif alive:
            await t.grace
        else:
            t.grace.cancel()  # the group is gone; its pgid may be reused, never signal it again
        if t.kill_reason is not None:  # killed: also what left the group, found by its env
            await asyncio.to_thread(c.kill_all)
        t.usage = Usage.at_end(t.usage, c.final_usage(rusage))
        return None

    def _release(self, t: _Task, c: Container, rusage: Any) -> str | None:
        """In a worker thread: the cgroup's verdict and final usage, then kill and remove it."""
        try:
            violation = c.violation()
            t.usage = Usage.at_end(t.usage, c.final_usage(rusage))
            c.destroy()
        except IsolationError as e:
            log.warning("task %s: could not release its cgroup: %s", t.task_id, e)
            return None
        return violation

    async def shutdown(self) -> None:
        """Kill every running task (SIGTERM, SIGKILL after grace) and wait for their results.

        Later launches raise RuntimeError. Releases the isolator's own cgroups at the end.
        """
        self._closed = True
        for task_id in list(self._tasks):
            self.kill(task_id)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.close_if_idle()
        if not self._tasks:
            self._journal.close()
            await asyncio.to_thread(self.isolator.close)

    async def kill_orphans(self) -> list[str]:
        """Clean up after an earlier slave on this work dir (the slave calls this once, at
        start-up): its task cgroups (killed and removed), then the process groups its journal
        proves it started, sparing the tasks this executor runs; then compacts the journal.
        Returns the cgroups' and tasks' names; `interrupted` holds the sandbox paths of every
        task the journal says was running (for the garbage collector: they end now).
        """
        mine = {t.pgid for t in self._tasks.values() if t.pgid}
        keep = {t.container.name for t in self._tasks.values() if t.container}
        # Only the journal as it is now: whatever we append while it is read is ours.
        known = self._journal.known_size()
        self._orphan_scans += 1  # it reads the first `known` bytes of this very file
        try:
            self._recovering = True
            try:
                cleaned = await asyncio.to_thread(self.isolator.recover, keep)
            finally:
                self._recovering = False
                if self._spawn_queue and not self._pump_armed:
                    self._pump_armed = True
                    asyncio.get_running_loop().call_soon(self._pump)
            killed = await kill_orphans(self.work_dir, exclude_pgids=mine,
                                        grace=self.kill_grace, sleep=self._sleep,
                                        journal_bytes=known)
            starts = await asyncio.to_thread(unended_starts, self.work_dir / JOURNAL, known)
            self.interrupted = [r["sandbox"] for r in starts if isinstance(r.get("sandbox"), str)]
        finally:
            self._orphan_scans -= 1
        if not self._orphan_scans and self._journal.exists():
            self._journal.compact(t.record for t in self._tasks.values() if t.record)
        return cleaned + killed

    # -- usage, limits -----------------------------------------------------------------------

    async def sample_usage(self) -> None:
        """Sample every running task's usage (in a worker thread) and end, FAILED, those
        over a limit. Call once per progress interval; a call while one runs does nothing."""
        live = [t for t in self._tasks.values() if t.container is not None and not t.exited]
        if self._sampling or not live:
            return
        self._sampling = True
        try:
            usages, violations = await asyncio.to_thread(self._sample, live)
        finally:
            self._sampling = False
        for t in live:
            assert t.container is not None
            t.usage = usages.get(t.container.name, t.usage)
        for t, message in violations:
            if not t.exited and t.kill_reason is None:
                log.info("task %s: %s: killing it", t.task_id, message)
                t.kill_reason, t.limit_message = "limit", message
                asyncio.ensure_future(self._kill_everything(t))

    def _sample(self, live: Collection[_Task]) -> tuple[dict[str, Usage], list[tuple[_Task, str]]]:
        containers = [t.container for t in live if t.container is not None]
        usages = self.isolator.sample(containers)
        violations = []
        if self._cgroups:
            for t in live:
                message = t.container.violation() if t.container else None
                if message:
                    violations.append((t, message))
        return usages, violations

    def poll_usage(self) -> dict[str, Usage]:
        """{task_id: usage} of the running tasks whose usage changed since the last poll."""
        changed = {}
        for t in self._tasks.values():
            u = t.usage
            if u is not None and not t.exited and u.reportable_change(t.reported_usage):
                t.reported_usage = changed[t.task_id] = u
        return changed

    def monitor(self) -> list[dict[str, Any]]:
        """The running tasks' limits and last usage, for GET /slave(N)/monitor."""
        return [{"id": t.task_id, "attempt": t.attempt, "name": t.name,
                 "limits": {**t.limits.to_json(), "cpu_limit": self.isolator.cpu_limit},
                 "usage": None if t.usage is None else t.usage.to_json()}
                for t in self._tasks.values()]

    # -- progress, logs, counters ----------------------------------------------------------

    def poll_progress(self) -> dict[str, float]:
        """Tail each running task's stdout; {task_id: progress} for those that changed.

        Call once per report interval. Reads at most MAX_TAIL bytes per task, on the loop.
        """
        changed: dict[str, float] = {}
        for t in self._tasks.values():
            if t.exited:
                continue
            t.tail.scan(t.task_id)
            last = t.tail.scanner.last
            if last is not None and last != t.reported:
                t.reported = changed[t.task_id] = last
        return changed

    def progress(self) -> dict[str, float]:
        """{task_id: last progress seen} for every running task (0.0 before any); no I/O."""
        return {tid: t.tail.scanner.last or 0.0 for tid, t in self._tasks.items()}

    def sandboxes_in_use(self) -> set[str]:
        """The sandbox directory names of the tasks launched here and not yet ended."""
        names = set()
        for t in self._tasks.values():
            try:
                names.add(os.path.basename(t.sandbox or sandbox_dir("", t.task_id, t.attempt)))
            except ValueError:  # an id that names no sandbox: it will fail to start
                pass
        return names

    def running(self) -> list[RunningTask]:
        """Snapshots of the running tasks (launched, result not yet reported)."""
        return [t.snapshot() for t in self._tasks.values()]

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
        t = self._tasks.get(task_id)
        running = t is not None and t.attempt == attempt
        return read_log(self._work_dir, task_id, attempt, stream, offset, limit, running)

    def counters(self) -> dict[str, int]:
        """Counters for /vars: tasks_launched, _running, _finished, _failed, _killed,
        _limit_exceeded."""
        return {**self._counts, "tasks_running": len(self._tasks)}
