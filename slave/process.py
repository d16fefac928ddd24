"""The slave actor: registers with the master, runs tasks, reports progress and status.

- Registration is retried with capped exponential backoff until the master answers; after
  a broken link (or a master that says it does not know us) it re-registers with its
  slave id and its running tasks, so a restarted master recovers them.
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
- Authentication (protos/auth.py): a registration answer counts only when it echoes the
  nonce of one of our own attempts; every later message from the master must come from its
  UPID and carry a valid MAC of the current session, and everything we send carries ours.
  The credential from the first registration is kept in `slave.json` (mode 0600) so that a
  restarted slave can re-register under its id. Refused messages change nothing; they are
  counted (`commands_refused`, `/metrics/snapshot` `slave/messages_refused`) and logged once
  per sender and minute.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

import libproc
from libproc import UPID, ProtobufProcess, defer, delay
from libproc.clock import sleep as clock_sleep
from libproc.metrics import metrics
from protos import auth
from protos import cluster_pb2 as pb
from slave.executor import Executor, TaskResult
from slave.isolation import DEFAULT_TASK_PIDS_MAX, Isolator, Limits, Usage, create_isolator

__all__ = ["Slave", "SlaveConfig"]

log = logging.getLogger("slave")
VERSION = "0.1.0"


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


class Slave(ProtobufProcess):
    def __init__(self, config: SlaveConfig, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id, prefix="slave")
        self.config = config
        self.slave_id: str | None = None
        self.credential: bytes | None = None  # from the first registration (slave.json)
        self.sequence = 0  # of our last re-registration attempt (slave.json)
        self.session: auth.Session | None = None  # of the registration the master answered
        # Our registration attempts the master may still answer: nonce -> "register" or
        # "reregister", oldest first; an answer retires its attempt and every older one.
        self._attempts: OrderedDict[bytes, str] = OrderedDict()
        self._refusals = auth.Refusals()
        self._last_hint = -1e9  # when an unsigned "re-register" ping was last obeyed
        self.mode = "registering"  # registering | registered | shutting_down
        self.tasks: dict[str, pb.TaskInfo] = {}  # running here, by task id
        self.unacked: dict[bytes, pb.StatusUpdate] = {}
        self._resend_at: dict[bytes, tuple[float, float]] = {}  # uuid -> (due, interval)
        self._backoff = 0.25
        self._register_timer: libproc.Timer | None = None
        self._last_master_contact = 0.0
        self._counters = {"registrations": 0, "status_updates_sent": 0,
                          "progress_reports_sent": 0, "launches_received": 0,
                          "commands_refused": 0}
        self._started = time.time()
        self.executor: Executor | None = None
        self._stopped: libproc.Promise[bool] = libproc.Promise()

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
        self._load_identity()
        self.install(pb.SlaveRegisteredMessage, self._registered)
        self.install(pb.SlaveReregisteredMessage, self._reregistered)
        self.install(pb.RegistrationRefusedMessage, self._refused)
        self.install(pb.LaunchTasksMessage, self._launch)
        self.install(pb.KillTaskMessage, self._kill)
        self.install(pb.StatusUpdateAcknowledgementMessage, self._acknowledged)
        self.install(pb.PingSlaveMessage, self._ping)
        self.install(pb.ShutdownSlaveMessage, self._shutdown_requested)
        self.route("/vars", self._vars)
        self.route("/logs", self._logs)
        self.route("/tasks", self._tasks_json)
        self.route("/monitor", self._monitor)
        libproc.future.as_future(self._kill_orphans())
        self._register()
        delay(self.config.progress_interval, self.pid, self._report_progress)
        delay(self.config.update_retry, self.pid, self._retry_updates)

    async def _kill_orphans(self) -> None:
        assert self.executor is not None
        killed = await self.executor.kill_orphans()
        if killed:
            log.warning("killed %d task(s) left running by an earlier slave: %s",
                        len(killed), ", ".join(killed))

    def finalize(self) -> None:
        """The actor is gone (terminated, or libproc stopped): give back this slave's own
        cgroups unless tasks still run in them (a restarted slave cleans those up)."""
        if self.executor is not None and not self.executor.running():
            self.executor.isolator.close()

    def _identity_file(self) -> Path:
        return self.config.work_dir / "slave.json"

    def _load_identity(self) -> None:
        """Our slave id, credential and sequence from `slave.json`; without a credential
        (a file from an older version, or a garbled one) we register anew."""
        try:
            data = json.loads(self._identity_file().read_text())
            slave_id, key, seq = data.get("slave_id"), data.get("key"), data.get("sequence", 0)
            if (isinstance(slave_id, str) and slave_id and isinstance(key, str)
                    and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
                self.slave_id, self.credential, self.sequence = slave_id, bytes.fromhex(key), seq
        except (OSError, ValueError, AttributeError):
            pass

    def _save_identity(self) -> None:
        """Written before each re-registration is sent, so a sequence is never reused."""
        path = self._identity_file()
        tmp = path.with_suffix(".tmp")
        try:
            identity: dict[str, Any] = {"slave_id": self.slave_id,
                                        "master": str(self.config.master)}
            if self.credential is not None:
                identity["key"] = self.credential.hex()
                identity["sequence"] = self.sequence
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(identity))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not record the slave id in %s: %s", path, exc)

    def _forget_identity(self) -> None:
        self.slave_id, self.credential, self.sequence, self.session = None, None, 0, None
        try:
            self._identity_file().unlink()
        except OSError:
            pass

    async def shutdown(self) -> None:
        """Kill every task, tell the master, stop: what SIGTERM does."""
        if self.mode == "shutting_down":
            return
        self.mode = "shutting_down"
        assert self.executor is not None
        await self.executor.shutdown()
        if self.slave_id is not None and self.session is not None:
            self._send_master(pb.UnregisterSlaveMessage(
                slave_id=pb.SlaveID(value=self.slave_id)))
        self._stopped.set(True)

    # -- registration --------------------------------------------------------------------

    def _register(self) -> None:
        if self.mode != "registering":
            return
        self._counters["registrations"] += 1
        master = self.config.master
        self.link(master, relink=True)
        resources = pb.Resources(cpus=self.config.cpus, mem=self.config.mem)
        hostname = self.config.hostname or socket.gethostname()
        assert self.executor is not None
        iso = self.executor.isolator
        isolation = pb.Isolation(mode=iso.mode, cgroup_version=iso.version,
                                 cpu_limit=iso.cpu_limit, task_pids_max=iso.pids_max)
        nonce = auth.new_nonce()
        if self.slave_id is None or self.credential is None:
            self.slave_id = None
            msg: Any = pb.RegisterSlaveMessage(resources=resources, hostname=hostname,
                                               version=VERSION, nonce=nonce,
                                               isolation=isolation)
            if self.config.secret:
                auth.seal(msg, auth.registration_key(self.config.secret),
                          auth.SLAVE_TO_MASTER, 1)
            self._remember_attempt(nonce, "register")
        else:
            running = []
            assert self.executor is not None
            progress = self.executor.progress()
            for info in self.tasks.values():
                running.append(pb.RunningTask(task=info, state=pb.RUNNING,
                                              progress=progress.get(info.task_id.value, 0.0)))
            # Tasks that ended while the master was away: their (re-sent) status update
            # settles them, so the master must not declare them lost meanwhile.
            for update in self.unacked.values():
                if update.state != pb.RUNNING and update.task_id.value not in self.tasks:
                    running.append(pb.RunningTask(
                        task=pb.TaskInfo(name="", task_id=update.task_id, command="",
                                         attempt=update.attempt),
                        state=update.state, progress=update.progress))
            self.sequence += 1
            self._save_identity()  # before sending: a sequence the master saw is never reused
            msg = pb.ReregisterSlaveMessage(
                slave_id=pb.SlaveID(value=self.slave_id), resources=resources,
                tasks=running, hostname=hostname, version=VERSION, nonce=nonce,
                sequence=self.sequence, isolation=isolation)
            auth.seal(msg, self.credential, auth.SLAVE_TO_MASTER, self.sequence)
            self._remember_attempt(nonce, "reregister")
        self.send(master, msg)
        # One retry chain at a time: a retry still armed from an earlier chain is replaced.
        if self._register_timer is not None:
            self._register_timer.cancel()
        self._register_timer = delay(self._backoff, self.pid, self._register)
        self._backoff = min(self._backoff * 2, self.config.max_backoff)

    def _remember_attempt(self, nonce: bytes, kind: str) -> None:
        self._attempts[nonce] = kind
        while len(self._attempts) > 16:
            self._attempts.popitem(last=False)

    def _answered(self, nonce: bytes) -> str | None:
        """The kind of our attempt that `nonce` names, retiring it and every older one;
        None when it names none of ours (forged, replayed, or already answered)."""
        kind = self._attempts.get(nonce) if nonce else None
        if kind is None:
            return None
        while self._attempts:
            old, _ = self._attempts.popitem(last=False)
            if old == nonce:
                break
        return kind

    def _refuse(self, sender: UPID, what: str) -> None:
        self._counters["commands_refused"] += 1
        metrics.inc("slave/messages_refused")
        if self._refusals.refuse(str(sender), libproc.Clock.now()):
            log.warning("refused %s from %s: not from our master, or not signed by our "
                        "current session (further refusals from it this minute not logged)",
                        what, sender)

    def _from_master(self, sender: UPID, msg: Any, what: str) -> bool:
        """A command counts only from our master's UPID and signed by our session."""
        if sender == self.config.master and self.session is not None and self.session.open(msg):
            self._last_master_contact = libproc.Clock.now()
            return True
        self._refuse(sender, what)
        return False

    def _send_master(self, msg: Any) -> None:
        assert self.session is not None
        self.session.seal(msg)
        self.send(self.config.master, msg)

    def _became_registered(self, slave_id: str, credential: bytes, session: auth.Session,
                           what: str) -> None:
        first = self.slave_id != slave_id or self.credential != credential
        if self.mode == "registering":
            log.info("%s with %s as %s", what, self.config.master, slave_id)
        self.slave_id, self.credential, self.session = slave_id, credential, session
        self.mode = "registered"
        self._backoff = 0.25
        if self._register_timer is not None:
            self._register_timer.cancel()
            self._register_timer = None
        self._last_master_contact = libproc.Clock.now()
        if first:
            self.sequence = 0
            self._save_identity()
        # Confirms the session at once: the master schedules nothing on us before this.
        self._send_master(pb.PongSlaveMessage(slave_id=pb.SlaveID(value=slave_id)))
        self._resend_updates()

    def _answer_session(self, sender: UPID, msg: Any, kind: str) -> tuple[bytes, auth.Session]:
        """Check a registration answer; (credential, session), or raises ValueError."""
        if sender != self.config.master:
            raise ValueError(f"it is not from our master {self.config.master}")
        if self._answered(msg.nonce) != kind:
            raise ValueError("it answers none of our registration attempts")
        slave_id = msg.slave_id.value
        if kind == "reregister":
            if slave_id != self.slave_id or self.credential is None:
                raise ValueError(f"it names slave {slave_id!r}, we are {self.slave_id!r}")
            credential = self.credential
        elif self.config.secret:
            if not msg.salt:
                raise ValueError("the master runs without a secret, but this slave was "
                                 "given one; give both the same --secret, or neither")
            credential = auth.slave_key(self.config.secret, slave_id, msg.salt)
        else:
            credential = msg.key
        if len(credential) < 16 or not slave_id:
            raise ValueError("it carries no usable credential")
        session = auth.Session(auth.session_key(credential, msg.nonce, msg.master_nonce),
                               auth.SLAVE_TO_MASTER)
        if not session.open(msg):
            raise ValueError("its signature does not match (wrong --secret?)")
        return credential, session

    def _registered(self, sender: UPID, msg: pb.SlaveRegisteredMessage) -> None:
        try:
            credential, session = self._answer_session(sender, msg, "register")
        except ValueError as exc:
            self._refuse(sender, f"registration answer ({exc})")
            return
        self._became_registered(msg.slave_id.value, credential, session, "registered")

    def _reregistered(self, sender: UPID, msg: pb.SlaveReregisteredMessage) -> None:
        try:
            credential, session = self._answer_session(sender, msg, "reregister")
        except ValueError as exc:
            self._refuse(sender, f"re-registration answer ({exc})")
            return
        assert self.executor is not None
        for tid in msg.kill_tasks:
            log.info("master no longer wants task %s: killing it", tid.value)
            self.tasks.pop(tid.value, None)
            self.executor.kill(tid.value)
        self._became_registered(msg.slave_id.value, credential, session, "re-registered")

    def _refused(self, sender: UPID, msg: pb.RegistrationRefusedMessage) -> None:
        kind = self._answered(msg.nonce) if sender == self.config.master else None
        if kind is None:
            self._refuse(sender, "registration refusal")
            return
        log.error("master %s refused our %s: %s", sender,
                  "registration" if kind == "register" else "re-registration", msg.reason)
        if kind == "reregister" and msg.unknown_slave:
            # The master does not know our id or credential (its database was reset, or we
            # were removed): what we run is unknown to it. Start over as a new slave.
            log.warning("registering anew: killing %d task(s) the master does not know",
                        len(self.tasks))
            assert self.executor is not None
            for tid in list(self.tasks):
                self.executor.kill(tid)
            self.tasks.clear()
            self.unacked.clear()
            self._resend_at.clear()
            self._forget_identity()
            self._backoff = 0.25
            self._register()

    def _ping(self, sender: UPID, msg: pb.PingSlaveMessage) -> None:
        if sender != self.config.master:
            self._refuse(sender, "ping")
            return
        if self.session is None or not self.session.open(msg):
            # An unsigned "who are you?" (a master that lost our session, or anyone else):
            # re-registering is authenticated and harmless, so obey it, but rarely.
            now = libproc.Clock.now()
            if (not msg.connected and self.mode == "registered"
                    and now - self._last_hint >= self.config.max_backoff):
                self._last_hint = now
                log.info("master asks us to re-register (unsigned ping): re-registering")
                self.mode = "registering"
                self._register()
            return
        self._last_master_contact = libproc.Clock.now()
        if not msg.connected and self.mode == "registered":
            log.info("master does not know us (it restarted or declared us lost): "
                     "re-registering")
            self.mode = "registering"
            self._register()
            return
        if self.mode == "registered":
            self._send_master(pb.PongSlaveMessage(slave_id=pb.SlaveID(value=self.slave_id or "")))

    def exited(self, pid: UPID) -> None:
        if pid == self.config.master and self.mode == "registered":
            log.warning("lost the connection to the master %s: re-registering", pid)
            self.mode = "registering"
            self._backoff = 0.25
            self._register()

    def _shutdown_requested(self, sender: UPID, msg: pb.ShutdownSlaveMessage) -> None:
        if self._from_master(sender, msg, "shutdown"):
            log.warning("master asked us to shut down: %s", msg.message)
            libproc.future.as_future(self.shutdown())

    # -- tasks --------------------------------------------------------------------------

    def _launch(self, sender: UPID, msg: pb.LaunchTasksMessage) -> None:
        if not self._from_master(sender, msg, f"launch {msg.id}"):
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
        if not self._from_master(sender, msg, f"kill {msg.task_id.value}"):
            return
        assert self.executor is not None
        tid = msg.task_id.value
        if tid in self.tasks:
            self.executor.kill(tid)
        elif not any(u.task_id.value == tid for u in self.unacked.values()):
            # Unknown here (its launch never arrived): tell the master it is over.
            self._update(tid, 0, pb.KILLED, message="killed: the task was not running here")

    def _task_exited(self, result: TaskResult) -> None:
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
        self._send_master(pb.StatusUpdateMessage(update=update))

    def _acknowledged(self, sender: UPID, ack: pb.StatusUpdateAcknowledgementMessage) -> None:
        if not self._from_master(sender, ack, "acknowledgement"):
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
            if now - self._last_master_contact > self.config.master_timeout:
                log.warning("no word from the master for %.0fs: re-registering",
                            now - self._last_master_contact)
                self.mode = "registering"
                self._backoff = 0.25
                self._register()
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
                    self._send_master(pb.ReportProgressMessage(
                        tasks=tasks, slave_id=pb.SlaveID(value=self.slave_id or "")))
        libproc.future.as_future(self.executor.sample_usage())  # for the next report

    # -- HTTP -----------------------------------------------------------------------------

    def _vars(self, request: web.BaseRequest) -> web.Response:
        assert self.executor is not None
        lines = [("version", VERSION), ("pid", str(self.pid)),
                 ("slave_id", self.slave_id or "-"), ("mode", self.mode),
                 ("master", str(self.config.master)),
                 ("uptime_secs", f"{time.time() - self._started:.3f}"),
                 ("cpus", f"{self.config.cpus:g}"), ("mem", f"{self.config.mem:g}"),
                 ("unacked_updates", str(len(self.unacked)))]
        lines += [(k, str(v)) for k, v in self._counters.items()]
        lines += [(k, str(v)) for k, v in self.executor.counters().items()]
        lines += list(self.executor.isolator.describe().items())
        return web.Response(text="".join(f"{k} {v}\n" for k, v in lines),
                            content_type="text/plain")

    def _tasks_json(self, request: web.BaseRequest) -> web.Response:
        assert self.executor is not None
        progress = self.executor.progress()
        return web.json_response({"tasks": [
            {"id": tid, "name": info.name, "attempt": info.attempt,
             "progress": progress.get(tid, 0.0)} for tid, info in self.tasks.items()]})

    def _monitor(self, request: web.BaseRequest) -> web.Response:
        """Each running task's limits and last sampled usage (as Mesos's /monitor/statistics)."""
        assert self.executor is not None
        return web.json_response({"isolation": self.executor.isolator.describe(),
                                  "tasks": self.executor.monitor()})

    def _logs(self, request: web.BaseRequest) -> web.Response:
        """`?task_id=&attempt=&stream=&offset=&limit=`: a log's bytes from `offset`, with
        `X-Log-Offset` (where to read next) and `X-Log-Eof`. Any bad parameter is a 400
        saying which; a log that is not here (or cannot be opened) is a 404."""
        assert self.executor is not None
        q = request.query

        def number(key: str, default: int, high: int) -> int:
            value = q.get(key)
            if value is None:
                return default
            if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(
                    value) > high:
                raise ValueError(f"{key!r} must be a whole number from 0 to {high}, got "
                                 f"{value[:30]!r}")
            return int(value)

        task_id = q.get("task_id", "")
        stream = q.get("stream", "stdout")
        try:
            if not task_id or len(task_id) > 255 or not task_id.isprintable():
                raise ValueError(f"'task_id' must be a task id (1 to 255 printable "
                                 f"characters), got {task_id[:30]!r}")
            attempt = number("attempt", 1, 10**14 - 1)
            offset = number("offset", 0, 2**63 - 1)
            limit = number("limit", 65536, 2**31 - 1)
            data, new_offset, eof = self.executor.read_log(task_id, attempt, stream,  # type: ignore[arg-type]
                                                           offset, limit)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except FileNotFoundError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except OSError as exc:  # e.g. a name too long for the file system: not here either
            return web.json_response({"error": f"no readable {stream} for task "
                                      f"{task_id[:30]!r} attempt {attempt}: "
                                      f"{exc.strerror or exc}"}, status=404)
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"X-Log-Offset": str(new_offset),
                                     "X-Log-Eof": "1" if eof else "0"})

    def stopped(self) -> libproc.Future[bool]:
        return self._stopped.future




def _limit(value: float, given: bool, most: float) -> float | None:
    """A launch's cpus or mem as a limit: None unless given, finite and in (0, most]."""
    return value if given and math.isfinite(value) and 0 < value <= most else None


def _usage_pb(usage: Usage) -> pb.ResourceUsage:
    return pb.ResourceUsage(cpu_seconds=usage.cpu_seconds, mem_mib=usage.mem_mib,
                            mem_peak_mib=usage.mem_peak_mib, source=usage.source,
                            timestamp=usage.timestamp)
