"""The slave actor: registers with the master, runs tasks, reports progress and status.

- Registration and the authentication of every message from and to the master are
  `slave.registration` (a helper object on this actor's loop); the HTTP endpoints are
  `slave.endpoints`.
- Every status update (RUNNING, then the terminal state with the exit code) is kept and
  re-sent until the master acknowledges it: an update sent while the master is down arrives
  once it is back. The master acknowledges only once the update is stored, which under load
  takes more than a second; so an update is re-sent only `update_retry` after it was last
  sent, then at doubling intervals (capped at `max_backoff`), never in a blind sweep that
  would double the master's work just when it is busiest. (Re-)registering re-sends all.
- Progress of all running tasks goes out as one ReportProgressMessage per interval, with the
  usage of those whose usage changed (sampled in the background each interval, so a report
  carries the sample of the interval before); a terminal status update carries the final one.
- Isolation (`--isolation`, `slave.isolation`) is chosen once, at start: `auto` falls back to
  none with one WARN line saying why. Its mode and cgroup version go into /vars, the
  registration messages and GET /slave(N)/monitor (each running task's limits and usage).
- Commands from the master (launch, kill, acknowledgements, shutdown) count only from its
  UPID and signed by the current session; refused ones change nothing and are counted.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libproc
from libproc import UPID, ProtobufProcess, defer, delay
from libproc.clock import sleep as clock_sleep
from protos import auth
from protos import cluster_pb2 as pb
from slave.endpoints import Endpoints
from slave.executor import Executor, TaskResult
from slave.gc import GarbageCollector, GcConfig
from slave.isolation import DEFAULT_TASK_PIDS_MAX, Isolator, Limits, Usage, create_isolator
from slave.metrics import SlaveMetrics
from slave.registration import VERSION, Registration

__all__ = ["VERSION", "Slave", "SlaveConfig"]

log = logging.getLogger("slave")


@dataclass
class SlaveConfig:
    master: UPID
    work_dir: Path
    cpus: float = 4.0
    mem: float = 4096.0
    progress_interval: float = 1.0
    update_retry: float = 1.0  # first re-send of an unacknowledged status update after this
    max_backoff: float = 5.0  # cap of the registration backoff and of the re-send interval
    kill_grace: float = 3.0
    secret: str | None = None
    hostname: str = ""
    master_timeout: float = 15.0  # no word from the master this long -> re-register
    isolation: str = "auto"  # auto | cgroups | none
    cpu_limit: str = "soft"  # soft (shares/weight) | hard (CFS quota)
    task_pids_max: int = DEFAULT_TASK_PIDS_MAX
    isolator: Isolator | None = None  # already detected (run_slave does); else in initialize
    gc: GcConfig = field(default_factory=GcConfig)  # --gc-delay, --gc-disk-watermark, ...


class Slave(ProtobufProcess):
    def __init__(self, config: SlaveConfig, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id, prefix="slave")
        self.config = config
        self.slave_id: str | None = None
        self.credential: bytes | None = None  # from the first registration (slave.json)
        self.sequence = 0  # of our last re-registration attempt (slave.json)
        self.session: auth.Session | None = None  # of the registration the master answered
        self.mode = "registering"  # registering | registered | shutting_down
        self.tasks: dict[str, pb.TaskInfo] = {}  # running here, by task id
        self.unacked: dict[bytes, pb.StatusUpdate] = {}
        self._resend_at: dict[bytes, tuple[float, float]] = {}  # uuid -> (due, interval)
        self._counters = {"registrations": 0, "status_updates_sent": 0,
                          "progress_reports_sent": 0, "launches_received": 0,
                          "commands_refused": 0, "status_updates_resent": 0}
        self._started = time.time()
        self.executor: Executor | None = None
        self.gc: GarbageCollector | None = None
        self._stopped: libproc.Promise[bool] = libproc.Promise()
        self.registration = Registration(self)
        self.endpoints = Endpoints(self)
        self.metrics = SlaveMetrics(self)

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self) -> None:
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        isolator = self.config.isolator
        if isolator is None:  # IsolationError for `cgroups` when there are none
            isolator, why = create_isolator(
                self.config.isolation, str(self.config.work_dir),
                cpu_limit=self.config.cpu_limit, pids_max=self.config.task_pids_max)
            if why:
                log.warning("isolation: cgroups cannot be used here, so tasks run without "
                            "isolation (cpus and mem are bookkeeping only): %s", why)
        self.executor = Executor(self.config.work_dir, defer(self.pid, self._task_exited),
                                 kill_grace=self.config.kill_grace, sleep=clock_sleep,
                                 isolator=isolator)
        self.gc = GarbageCollector(self.config.work_dir, self.config.gc, self.pid,
                                   self.executor.sandboxes_in_use)
        self.registration.load_identity()
        self.registration.install()
        self.install(pb.LaunchTasksMessage, self._launch)
        self.install(pb.KillTaskMessage, self._kill)
        self.install(pb.StatusUpdateAcknowledgementMessage, self._acknowledged)
        self.install(pb.ShutdownSlaveMessage, self._shutdown_requested)
        self.endpoints.install()
        self.metrics.install()
        libproc.future.as_future(self._kill_orphans())
        self.registration.register()
        delay(self.config.progress_interval, self.pid, self._report_progress)
        delay(self.config.update_retry, self.pid, self._retry_updates)

    async def _kill_orphans(self) -> None:
        """At start-up: end what an earlier slave left running, then start collecting."""
        assert self.executor is not None and self.gc is not None
        try:
            killed = await self.executor.kill_orphans()
            if killed:
                log.warning("killed %d task(s) left running by an earlier slave: %s",
                            len(killed), ", ".join(killed))
        finally:
            await self.gc.recover(self.executor.interrupted)

    def finalize(self) -> None:
        """The actor is gone (terminated, or libproc stopped): give back this slave's own
        cgroups unless tasks still run in them (a restarted slave cleans those up)."""
        self.metrics.remove()
        if self.gc is not None:
            self.gc.close()
        if self.executor is not None and not self.executor.running():
            self.executor.isolator.close()

    async def shutdown(self) -> None:
        """Kill every task, tell the master, stop: what SIGTERM does."""
        if self.mode == "shutting_down":
            return
        self.mode = "shutting_down"
        assert self.executor is not None
        await self.executor.shutdown()
        if self.slave_id is not None and self.session is not None:
            self.registration.send_master(pb.UnregisterSlaveMessage(
                slave_id=pb.SlaveID(value=self.slave_id)))
        self._stopped.set(True)

    def exited(self, pid: UPID) -> None:
        if pid == self.config.master and self.mode == "registered":
            log.warning("lost the connection to the master %s: re-registering", pid)
            self.registration.restart()

    def _shutdown_requested(self, sender: UPID, msg: pb.ShutdownSlaveMessage) -> None:
        if self.registration.from_master(sender, msg, "shutdown"):
            log.warning("master asked us to shut down: %s", msg.message)
            libproc.future.as_future(self.shutdown())

    # -- tasks --------------------------------------------------------------------------

    def _launch(self, sender: UPID, msg: pb.LaunchTasksMessage) -> None:
        if not self.registration.from_master(sender, msg, f"launch {msg.id}"):
            return
        if self.mode == "shutting_down":
            return
        self._counters["launches_received"] += 1
        assert self.executor is not None
        for info in msg.tasks:
            tid = info.task_id.value
            if tid in self.tasks:
                continue  # a duplicate launch
            self.tasks[tid] = info
            res = info.resources
            limits = Limits(cpus=_limit(res.cpus, res.HasField("cpus"), 1e6),
                            mem_mib=_limit(res.mem, res.HasField("mem"), 2.0**40))
            try:
                self.executor.launch(tid, info.command, name=info.name, attempt=info.attempt,
                                     timeout=info.timeout or None, limits=limits)
            except (ValueError, RuntimeError) as exc:
                self.tasks.pop(tid, None)
                self._update(tid, info.attempt, pb.FAILED, message=f"could not start: {exc}")
                continue
            self._update(tid, info.attempt, pb.RUNNING)

    def _kill(self, sender: UPID, msg: pb.KillTaskMessage) -> None:
        if not self.registration.from_master(sender, msg, f"kill {msg.task_id.value}"):
            return
        assert self.executor is not None
        tid = msg.task_id.value
        if tid in self.tasks:
            self.executor.kill(tid)
        elif not any(u.task_id.value == tid for u in self.unacked.values()):
            # Unknown here (its launch never arrived): tell the master it is over.
            self._update(tid, 0, pb.KILLED, message="killed: the task was not running here")

    def _task_exited(self, result: TaskResult) -> None:
        assert self.gc is not None
        self.gc.ended(result.task_id, result.attempt)
        self.metrics.ended(result)
        info = self.tasks.pop(result.task_id, None)
        if self.mode == "shutting_down":
            return  # the master is told by UnregisterSlaveMessage
        if info is None:
            return  # killed on the master's request after it declared the task lost
        state = {"FINISHED": pb.FINISHED, "KILLED": pb.KILLED}.get(result.state, pb.FAILED)
        self._update(result.task_id, result.attempt, state, exit_code=result.exit_code,
                     message=result.message, progress=result.progress, usage=result.usage)

    def _update(self, task_id: str, attempt: int, state: pb.TaskState, *,
                exit_code: int | None = None, message: str = "",
                progress: float | None = None, usage: Usage | None = None) -> None:
        update = pb.StatusUpdate(task_id=pb.TaskID(value=task_id), state=state,
                                 uuid=uuid.uuid4().bytes, timestamp=time.time(),
                                 attempt=attempt, message=message)
        if self.slave_id:
            update.slave_id.value = self.slave_id
        if exit_code is not None:
            update.exit_code = exit_code
        if progress is not None:
            update.progress = progress
        if usage is not None:
            update.usage.CopyFrom(_usage_pb(usage))
        self.unacked[update.uuid] = update
        if self.mode == "registered":
            self._send_update(update)

    def _send_update(self, update: pb.StatusUpdate, interval: float | None = None) -> None:
        """Send now; the next re-send (if no ack comes) is due `interval` from now."""
        self._counters["status_updates_sent"] += 1
        interval = self.config.update_retry if interval is None else interval
        self._resend_at[update.uuid] = (libproc.Clock.now() + interval, interval)
        self.registration.send_master(pb.StatusUpdateMessage(update=update))

    def _acknowledged(self, sender: UPID, ack: pb.StatusUpdateAcknowledgementMessage) -> None:
        if not self.registration.from_master(sender, ack, "acknowledgement"):
            return  # a forged ack would make us drop a result the master never stored
        self.unacked.pop(ack.uuid, None)
        self._resend_at.pop(ack.uuid, None)

    def _resend_updates(self, *, due_only: bool = False) -> None:
        """Re-send unacknowledged updates, oldest first: all, or (`due_only`) those whose
        re-send is due, each with double its last interval (at most `max_backoff`)."""
        now = libproc.Clock.now()
        cap = max(self.config.max_backoff, self.config.update_retry)
        for update in sorted(self.unacked.values(), key=lambda u: u.timestamp):
            interval = None
            if due_only:
                due, last = self._resend_at.get(update.uuid, (now, self.config.update_retry / 2))
                if due > now:
                    continue
                interval = min(last * 2, cap)
            if self.slave_id:
                update.slave_id.value = self.slave_id
            self._counters["status_updates_resent"] += 1
            self._send_update(update, interval)

    def _retry_updates(self) -> None:
        try:
            self._retry_updates_once()
        finally:  # re-armed whatever happens: an error must not stop the retries for good
            if self.mode != "shutting_down":
                delay(self.config.update_retry, self.pid, self._retry_updates)

    def _retry_updates_once(self) -> None:
        if self.mode == "registered":
            now = libproc.Clock.now()
            silent = now - self.registration.last_master_contact
            if silent > self.config.master_timeout:
                log.warning("no word from the master for %.0fs: re-registering", silent)
                self.registration.restart()
            elif self.unacked:
                self._resend_updates(due_only=True)

    def _report_progress(self) -> None:
        try:
            self._report_progress_once()
        finally:  # re-armed whatever happens
            if self.mode != "shutting_down":
                delay(self.config.progress_interval, self.pid, self._report_progress)

    def _report_progress_once(self) -> None:
        assert self.executor is not None
        if self.mode == "registered":
            changed = self.executor.poll_progress()
            usage = self.executor.poll_usage()
            if changed or usage:
                tasks = []
                progress_now = self.executor.progress() if usage else changed
                for tid in {**changed, **usage}:
                    info = self.tasks.get(tid)
                    if info is None:
                        continue
                    task = pb.Task(name=info.name, task_id=info.task_id,
                                   progress=changed.get(tid, progress_now.get(tid, 0.0)),
                                   state=pb.RUNNING, attempt=info.attempt)
                    if tid in usage:
                        task.usage.CopyFrom(_usage_pb(usage[tid]))
                    tasks.append(task)
                if tasks:
                    self._counters["progress_reports_sent"] += 1
                    self.registration.send_master(pb.ReportProgressMessage(
                        tasks=tasks, slave_id=pb.SlaveID(value=self.slave_id or "")))
        libproc.future.as_future(self.executor.sample_usage())  # for the next report

    def stopped(self) -> libproc.Future[bool]:
        return self._stopped.future




def _limit(value: float, given: bool, most: float) -> float | None:
    """A launch's cpus or mem as a limit: None unless given, finite and in (0, most]."""
    return value if given and math.isfinite(value) and 0 < value <= most else None


def _usage_pb(usage: Usage) -> pb.ResourceUsage:
    return pb.ResourceUsage(cpu_seconds=usage.cpu_seconds, mem_mib=usage.mem_mib,
                            mem_peak_mib=usage.mem_peak_mib, source=usage.source,
                            timestamp=usage.timestamp)
