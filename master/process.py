"""The master actor: slave registry, scheduling, task state, persistence, HTTP API.

Decisions live in pure modules (`scheduler`, `tasks`, `api`); this process does the I/O.
Guarantees it keeps:
- Submits are atomic: tasks are created in the database (ids and rows in one transaction)
  before the actor learns of them, so an error answer leaves no task anywhere and an answer
  with ids means durable tasks. A kill that the database alone decides (a PENDING task, or
  one whose slave is gone) is answered only once KILLED is committed; 503 changes nothing.
- A record the database refuses is refused alone and not re-saved until it changes; saves
  that failed because the database was unavailable are re-saved once it is back.
- A launch is sent only after the task's STAGING state is committed.
- A terminal status update is acknowledged to the slave only after it is committed, so an
  acknowledged result is never lost; duplicates and late updates are acknowledged and
  change nothing (the state machine refuses them).
- A slave whose link breaks is `disconnected`; with no contact for `slave_timeout` seconds
  it is `lost`, and its tasks become LOST (re-queued while retries are left).
- A task re-queued after a failed or lost attempt waits its retry backoff, then prefers
  another slave (master/task_attempts.py); every attempt is kept and saved with the task.
- Nothing a slave sends counts unless it is signed by the session of its current
  registration (protos/auth.py), and a status update counts only from the slave that holds
  the task's current attempt; everything we send a slave is signed. A first registration is
  not trusted (scheduled on, persisted, published) until the slave confirms it with a signed
  message; a re-registration must be signed with the slave's credential and a growing
  sequence. Refused messages change nothing, are counted (`messages_refused` in /vars,
  `master/messages_refused` in /metrics/snapshot) and logged once per sender and minute.
- Memory is bounded by what is live: every task that has not ended is in `tasks`, and of the
  ended ones only the `max_completed_tasks` most recent (whose last save has committed); the
  database holds them all, and the HTTP API reads it for the others. A restart loads only
  the tasks that have not ended, and the counts by state. Counters and `/master/vars` are
  kept as tasks change (`TaskIndex`), never by iterating tasks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import libproc
from libproc import UPID, ProtobufProcess, defer, delay
from libproc.future import as_future
from master import scheduler, task_queries
from master.api import TaskSpec, shown
from master.events import EventHub
from master.http_api import MasterHttp
from master.metrics import MasterMetrics
from master.registrar import Registrar
from master.registry import SlaveInfo
from master.store import RecordRefused, Store, StoreError
from master.task_attempts import TaskAttempts
from master.task_gc import TaskGC
from master.task_index import TaskIndex, task_key
from master.task_memory import TaskMemory
from master.tasks import ACTIVE_STATES, TERMINAL_STATES, TaskRecord
from protos import cluster_pb2 as pb

__all__ = ["Master", "MasterConfig", "VERSION"]

log = logging.getLogger("master")
VERSION = "0.1.0"


@dataclass
class MasterConfig:
    heartbeat_interval: float = 1.0  # seconds between pings to each slave
    slave_timeout: float = 5.0  # no contact for this long -> slave lost, its tasks LOST
    staging_timeout: float = 60.0  # STAGING with no word from the slave -> LOST
    # After a restart, how long slaves get to re-register before their tasks are LOST; it
    # must exceed the slaves' longest registration backoff (SlaveConfig.max_backoff, 5 s).
    reregister_timeout: float = 10.0
    secret: str | None = None  # required of slaves and API writers when set
    slave_retention: float = 600.0  # a lost or removed slave leaves the table after this
    max_slaves: int = 10_000  # the table's bound (lost slaves are forgotten first)
    max_completed_tasks: int = 10_000  # ended tasks kept in memory (the rest: database)
    task_retention: float | None = None  # delete tasks ended longer ago; None keeps them
    gc_interval: float = 60.0  # seconds between retention passes


def _progress(value: float) -> float:
    """Progress travels as a protobuf float32: undo its noise (0.1 -> 0.10000000149)."""
    return round(value, 6)


def _now() -> float:
    return libproc.Clock.now()


class Master(ProtobufProcess):
    def __init__(self, store: Store, config: MasterConfig | None = None) -> None:
        super().__init__("master")
        self.store = store
        self.config = config or MasterConfig()
        # Every task that has not ended, and the most recently ended ones (see the module
        # docstring); the database has them all.
        self.tasks: dict[str, TaskRecord] = {}
        self.slaves: dict[str, SlaveInfo] = {}
        self._by_pid: dict[UPID, str] = {}
        self.registrar = Registrar(self)  # who may be a slave; every message authenticated
        self._launch_seq = 0
        self._last_save: dict[str, asyncio.Future[None]] = {}
        self._dirty: set[str] = set()
        self.events = EventHub()  # GET /master/events
        self.http = MasterHttp(self)  # every HTTP endpoint, on aiohttp's router
        self._started = time.time()
        self._counters = {"status_updates": 0, "status_updates_ignored": 0,
                          "progress_reports": 0, "launches": 0, "registrations_refused": 0,
                          "messages_refused": 0, "scheduling_passes": 0,
                          "slaves_forgotten": 0, "records_refused": 0}
        self.attempts = TaskAttempts(self)  # attempt history, usage, retry backoff
        self._recovering_until: float | None = None
        self._index = TaskIndex()  # the PENDING queue, launched tasks, counts by state
        self.metrics = MasterMetrics(self)  # GET /metrics
        self.gc = TaskGC(self)  # --task-retention
        self.memory = TaskMemory(self)  # which ended tasks stay in memory
        self._schedule_queued = False
        self._schedule_deferred = False  # a pass skipped for a store fault: retried later

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self) -> None:
        self.install(pb.RegisterSlaveMessage, self.registrar.register)
        self.install(pb.ReregisterSlaveMessage, self.registrar.reregister)
        self.install(pb.StatusUpdateMessage, self._status_update)
        self.install(pb.ReportProgressMessage, self._report_progress)
        self.install(pb.PongSlaveMessage, self._pong)
        self.install(pb.UnregisterSlaveMessage, self._unregister)
        self.route("/", self.http.handle)
        libproc.add_health_check(f"{self.id}.store", self.store.fault)
        self.registrar.load()
        self._index.load_counts(self.store.read_blocking(task_queries.count_by_state))
        for record in self.store.read_blocking(task_queries.load_unended):
            self.tasks[record.id] = record
            self._index.adopt(record)
        self.attempts.recover(list(self.tasks.values()))
        self.store.on_commit = self.metrics.store_batch_seconds.observe
        self.metrics.install()
        self.memory.load_positions()
        active = self._index.active(self.tasks)
        if active:
            # Their slaves get a while to re-register before the tasks are LOST.
            self._recovering_until = _now() + max(self.config.slave_timeout,
                                                  self.config.reregister_timeout)
            log.info("recovered %d tasks (%d on slaves, waiting for them to re-register)",
                     len(self.tasks), len(active))
        delay(self.config.heartbeat_interval, self.pid, self._heartbeat)
        self._schedule()

    async def finalize(self) -> None:
        libproc.remove_health_check(f"{self.id}.store")
        self.attempts.close()
        self.events.close()
        self.store.on_commit = None
        self.metrics.remove()
        self.gc.stop()
        try:
            await self.store.flush()
        except StoreError as exc:
            log.error("final flush failed: %s", exc)

    # -- slaves --------------------------------------------------------------------------

    def _send_slave(self, slave: SlaveInfo, msg: Any) -> None:
        """Every message to a slave goes signed by its session, to its registered UPID."""
        slave.session.seal(msg)
        self.send(slave.pid, msg)

    def _adopt_tasks(self, slave: SlaveInfo, tasks: list[pb.RunningTask]) -> list[str]:
        """A slave re-registered reporting `tasks`: take back those we still want, declare
        lost ours it no longer has; the ids it must kill."""
        now = _now()
        kill: list[str] = []
        reported = set()
        for running in tasks:
            tid = running.task.task_id.value
            attempt = running.task.attempt
            reported.add(tid)
            rec = self.tasks.get(tid)
            if running.state in (pb.FINISHED, pb.FAILED, pb.KILLED, pb.LOST):
                continue  # ended while we were away; its status update follows
            if rec is None or rec.is_terminal or rec.attempts != attempt or (
                    rec.slave_id not in (None, slave.id)):
                kill.append(tid)  # the master no longer wants it (e.g. declared LOST)
                continue
            if rec.slave_id is None:
                kill.append(tid)  # PENDING here: this slave never held this attempt
                continue
            self._claim(slave, rec)
            if rec.state == "STAGING" and running.state == pb.RUNNING:
                rec.transition("RUNNING", now, attempt=attempt)
                self._save(rec)
        # Tasks the master placed on this slave that it no longer reports are gone,
        # unless a terminal status update for them is still on its way (it is retried).
        for rec in self._index.active(self.tasks):
            if rec.slave_id == slave.id and rec.id not in reported:
                self._task_lost(rec, f"slave {slave.id} re-registered without task {rec.id}",
                                now)
        self._maybe_end_recovery()
        return kill

    def _maybe_end_recovery(self) -> None:
        """Recovery ends early once every slave that holds a task is back (no need to wait)."""
        if self._recovering_until is None:
            return
        needed = {t.slave_id for t in self._index.active(self.tasks)}
        back = {s.id for s in self.slaves.values() if s.state == "active"}
        if needed <= back:
            self._recovering_until = None
            log.info("every slave with tasks re-registered: recovery done")

    def _claim(self, slave: SlaveInfo, rec: TaskRecord) -> None:
        if rec.id not in slave.tasks:
            slave.tasks.add(rec.id)
            slave.used_cpus += rec.cpus
            slave.used_mem += rec.mem

    def _release(self, rec: TaskRecord) -> None:
        slave = self.slaves.get(rec.slave_id or "")
        if slave is not None and rec.id in slave.tasks:
            slave.tasks.discard(rec.id)
            slave.used_cpus = max(0.0, slave.used_cpus - rec.cpus)
            slave.used_mem = max(0.0, slave.used_mem - rec.mem)

    def _send_kill(self, slave: SlaveInfo, task_id: pb.TaskID) -> None:
        self._send_slave(slave, pb.KillTaskMessage(task_id=task_id,
                                                   slave_id=pb.SlaveID(value=slave.id)))

    def _pong(self, sender: UPID, msg: pb.PongSlaveMessage) -> None:
        slave = self.registrar.authenticate(sender, msg.slave_id.value, msg, "pong")
        if slave is not None and slave.state in ("lost", "removed"):
            self._send_slave(slave, pb.PingSlaveMessage(connected=False))

    def _unregister(self, sender: UPID, msg: pb.UnregisterSlaveMessage) -> None:
        slave = self.registrar.authenticate(sender, msg.slave_id.value, msg, "unregister")
        if slave is None or slave.state in ("lost", "removed"):
            return
        log.info("slave %s shut down", slave.id)
        self._slave_gone(slave, "removed", f"slave {slave.id} shut down")

    def exited(self, pid: UPID) -> None:
        slave_id = self._by_pid.get(pid)
        slave = self.slaves.get(slave_id) if slave_id else None
        if slave is not None and slave.state == "active":
            log.info("slave %s disconnected (%s)", slave.id, pid)
            slave.state, slave.disconnected_at = "disconnected", _now()
            self._slave_changed(slave)

    def _slave_gone(self, slave: SlaveInfo, state: str, reason: str) -> None:
        slave.state = state
        now = _now()
        slave.lost_at = now
        for tid in sorted(slave.tasks, key=task_key):
            rec = self.tasks.get(tid)
            if rec is not None and rec.state in ACTIVE_STATES:
                self._task_lost(rec, reason, now)
        slave.tasks.clear()
        slave.used_cpus = slave.used_mem = 0.0
        self._slave_changed(slave)
        self._schedule()

    def _task_lost(self, rec: TaskRecord, reason: str, now: float) -> None:
        self._release(rec)
        if rec.transition("LOST", now, message=reason):
            if self.attempts.requeue(rec, now):
                log.info("task %s lost (%s); re-queued, retry in %.1fs", rec.id, reason,
                         self.attempts.retry_in(rec.id))
            self._save(rec)

    def _heartbeat(self) -> None:
        # Re-armed first: an error below must not stop heartbeats for good.
        delay(self.config.heartbeat_interval, self.pid, self._heartbeat)
        now = _now()
        timeout = self.config.slave_timeout
        if self._schedule_deferred and self.store.fault() is None:
            self._schedule_deferred = False
            self._schedule()
        for slave in list(self.slaves.values()):
            if slave.state == "active":
                if now - slave.last_contact > timeout:
                    log.warning("slave %s lost: no contact for %.1fs", slave.id, timeout)
                    self._slave_gone(slave, "lost", f"slave {slave.id} lost (no heartbeat)")
                else:
                    self._send_slave(slave, pb.PingSlaveMessage(connected=True))
            elif slave.state == "disconnected":
                if now - (slave.disconnected_at or now) > timeout:
                    log.warning("slave %s lost: disconnected for %.1fs", slave.id, timeout)
                    self._slave_gone(slave, "lost", f"slave {slave.id} lost (disconnected)")
                else:
                    self._send_slave(slave, pb.PingSlaveMessage(connected=True))
            elif (slave.state == "lost" and slave.lost_at is not None
                    and now - slave.lost_at < 20 * timeout):
                # A stopped slave that resumes learns at once that it must re-register
                # (and then kill the tasks we declared LOST).
                self._send_slave(slave, pb.PingSlaveMessage(connected=False))
        self.registrar.expire(now)
        if self._recovering_until is not None and now >= self._recovering_until:
            self._recovering_until = None
            known = {s.id for s in self.slaves.values() if s.state == "active"}
            for rec in self._index.active(self.tasks):
                if rec.slave_id not in known:
                    self._task_lost(rec, f"slave {rec.slave_id} did not re-register", now)
            self._schedule()
        for rec in self._index.active(self.tasks):
            if (rec.state == "STAGING" and rec.updated_at is not None
                    and now - rec.updated_at > self.config.staging_timeout):
                self._task_lost(rec, f"no word from slave {rec.slave_id} in "
                                f"{self.config.staging_timeout:g}s after launch", now)
                self._schedule()
        if self._dirty:
            self._resave_dirty()
        self.memory.heartbeat(now)

    # -- scheduling and launching --------------------------------------------------------

    def _schedule(self) -> None:
        """Schedule once the messages already queued are handled (one pass per burst).

        A burst of N status updates then costs one scheduling pass, not N.
        """
        if not self._schedule_queued:
            self._schedule_queued = True
            libproc.dispatch(self.pid, self._schedule_now)

    def _schedule_now(self) -> None:
        self._schedule_queued = False
        self._counters["scheduling_passes"] += 1
        if self._recovering_until is not None:
            return  # first let slaves re-register, so their resources are known
        if self.store.fault() is not None:
            self._schedule_deferred = True  # nothing can be durably STAGING now
            return
        pending = self.attempts.ready(self._index.pending(self.tasks))
        if not pending:
            return
        free = [scheduler.FreeResources(s.id, s.cpus - s.used_cpus, s.mem - s.used_mem)
                for s in self.slaves.values() if s.state == "active"]
        if not free:
            return
        assignments = scheduler.schedule(pending, free, spread=True,
                                         avoid=self.attempts.avoid(pending))
        if not assignments:
            return
        now = _now()
        by_slave: dict[str, list[tuple[str, int]]] = {}
        saves = []
        for a in assignments:
            rec = self.tasks[a.task_id]
            if rec.launch(a.slave_id, now):
                self._claim(self.slaves[a.slave_id], rec)
                by_slave.setdefault(a.slave_id, []).append((rec.id, rec.attempts))
                saves.append(self._save(rec))
        # Launch only once STAGING is durable: a master that dies in between relaunches.
        committed = as_future(asyncio.gather(*saves))
        for slave_id, items in by_slave.items():
            committed.on_any(defer(self.pid, self._launch, slave_id, items))

    def _launch(self, slave_id: str, items: list[tuple[str, int]], saved: Any) -> None:
        slave = self.slaves.get(slave_id)
        if saved.is_failed():
            # Never launch what is not durably STAGING: a master restarted meanwhile would
            # launch it again. Back to PENDING; scheduled again once the store is healthy.
            log.error("could not persist launches on %s (%s): %d task(s) back to PENDING",
                      slave_id, saved.failure(), len(items))
            now = _now()
            for tid, attempt in items:
                rec = self.tasks.get(tid)
                if rec is not None and rec.state == "STAGING" and rec.attempts == attempt:
                    self._release(rec)
                    rec.unlaunch(now)
                    self.attempts.observe(rec)
                    self._index.note(rec)
            return
        infos = []
        for tid, attempt in items:
            rec = self.tasks.get(tid)
            if rec is None or rec.state != "STAGING" or rec.attempts != attempt:
                continue
            infos.append(pb.TaskInfo(
                name=rec.name, task_id=pb.TaskID(value=rec.id), command=rec.command,
                resources=pb.Resources(cpus=rec.cpus, mem=rec.mem),
                timeout=rec.timeout or 0.0, attempt=rec.attempts))
        if not infos or slave is None or slave.state not in ("active", "disconnected"):
            return
        self._launch_seq += 1
        self._counters["launches"] += len(infos)
        if log.isEnabledFor(logging.INFO):
            for info in infos:
                log.info("task %s launched on slave %s (attempt %d): %s", info.task_id.value,
                         slave_id, info.attempt, shown(info.command, 60))
        self._send_slave(slave, pb.LaunchTasksMessage(
            id=self._launch_seq & 0x7FFFFFFF, tasks=infos, slave_id=pb.SlaveID(value=slave_id)))

    def _save(self, rec: TaskRecord) -> asyncio.Future[None]:
        # Every state change is saved, so this is where the indexes and the event stream
        # learn of it.
        self._index.note(rec)
        self.events.publish_task(rec.to_json())
        rows = self.attempts.observe(rec)
        fut = self.store.save(rec, rows)
        self._last_save[rec.id] = fut
        fut.add_done_callback(functools.partial(self._forget_save, rec.id))
        if rows:
            fut.add_done_callback(functools.partial(self.attempts.saved, rec.id, rows))
        return fut

    def _forget_save(self, tid: str, fut: asyncio.Future[None]) -> None:
        # Runs on the loop between events. `_last_save` holds the last save of each task
        # until it commits: a failed one stays until a re-save replaces it, so a repeated
        # status update is never acknowledged on the strength of a save that failed.
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            if self._last_save.get(tid) is fut:
                del self._last_save[tid]
        elif isinstance(exc, RecordRefused):  # the store logged it; re-saving cannot help
            self._counters["records_refused"] += 1
        else:  # the database is unavailable (the store logs that once): re-save later
            log.debug("could not persist task %s (will retry): %s", tid, exc)
            libproc.dispatch(self.pid, self._dirty.add, tid)

    def _resave_dirty(self) -> None:
        """Re-save records whose last save failed, so memory and database converge.

        Waits while the store reports a fault: the store probes by itself and the first
        heartbeat after it recovers re-saves everything at once."""
        if self.store.fault() is not None:
            return
        dirty, self._dirty = self._dirty, set()
        for tid in dirty:
            rec = self.tasks.get(tid)
            if rec is not None:
                self._save(rec)

    # -- status updates and progress ---------------------------------------------------

    def _status_update(self, sender: UPID, msg: pb.StatusUpdateMessage) -> None:
        update = msg.update
        slave = self.registrar.authenticate(sender, update.slave_id.value, msg, "status update")
        if slave is None:
            return
        self._counters["status_updates"] += 1
        received = time.monotonic()
        if slave.state in ("lost", "removed"):
            self._send_slave(slave, pb.PingSlaveMessage(connected=False))
        tid = update.task_id.value
        rec = self.tasks.get(tid)
        state = pb.TaskState.Name(update.state)
        ack = pb.StatusUpdateAcknowledgementMessage(
            slave_id=pb.SlaveID(value=slave.id), task_id=update.task_id, uuid=update.uuid)
        if rec is None or rec.slave_id != slave.id:
            # Not a task this slave holds (unknown, re-queued, or another slave's): it
            # changes nothing; stop it there and acknowledge, so the slave stops re-sending.
            self._counters["status_updates_ignored"] += 1
            log.debug("status update %s for task %s from slave %s, which does not hold it",
                      state, tid, slave.id)
            if state not in TERMINAL_STATES:
                self._send_kill(slave, update.task_id)
            self._send_slave(slave, ack)
            return
        attempt = update.attempt if update.HasField("attempt") else None
        now = _now()
        applied = rec.transition(
            state, now, attempt=attempt,
            progress=_progress(update.progress) if update.HasField("progress") else None,
            exit_code=update.exit_code if update.HasField("exit_code") else None,
            message=update.message if update.HasField("message") else None)
        if applied:
            log.debug("task %s -> %s", tid, state)
            if update.HasField("usage"):
                self.attempts.usage(rec, attempt, update.usage, slave.id)
            if state in TERMINAL_STATES:
                if log.isEnabledFor(logging.INFO):
                    ran = (now - rec.started_at) if rec.started_at else 0.0
                    log.info("task %s %s on slave %s after %.1fs (exit %s)%s", tid, state,
                             slave.id, ran, rec.exit_code,
                             f": {shown(rec.message, 80)}" if rec.message else "")
                self._release(rec)
                if state in ("FAILED", "LOST") and self.attempts.requeue(rec, now):
                    log.info("task %s %s (%s); re-queued, attempt %d of %d in %.1fs", tid,
                             state, rec.message, rec.attempts + 1, rec.retries + 1,
                             self.attempts.retry_in(tid))
            saved: asyncio.Future[Any] = self._save(rec)
            if state in TERMINAL_STATES:
                self._schedule()
        else:
            self._counters["status_updates_ignored"] += 1
            rejection = rec.check(state, attempt=attempt)
            log.debug("ignored update for %s: %s", tid, rejection.reason if rejection else "")
            if attempt is not None and attempt != rec.attempts and state not in TERMINAL_STATES:
                self._send_kill(slave, update.task_id)
            pending_save = self._last_save.get(tid)
            saved = pending_save if pending_save is not None else _done_future()
        # Acknowledge only what is durable: the slave re-sends until we do.
        saved.add_done_callback(
            lambda f: None if (f.cancelled() or f.exception()) else self._ack(slave, ack,
                                                                              received))

    def _ack(self, slave: SlaveInfo, ack: pb.StatusUpdateAcknowledgementMessage,
             received: float) -> None:
        # Runs between events (a future's callback): signed with the slave's session as
        # it is now, which is the one the slave holds unless it re-registered meanwhile.
        self.metrics.status_update_seconds.observe(time.monotonic() - received)
        current = self.slaves.get(slave.id)
        if current is not None:
            self._send_slave(current, ack)

    def _report_progress(self, sender: UPID, msg: pb.ReportProgressMessage) -> None:
        slave = self.registrar.authenticate(sender, msg.slave_id.value, msg, "progress report")
        if slave is None or slave.state in ("lost", "removed"):
            return
        self._counters["progress_reports"] += 1
        now = _now()
        for task in msg.tasks:
            rec = self.tasks.get(task.task_id.value)
            if rec is None or rec.slave_id != slave.id:
                continue
            attempt = task.attempt if task.HasField("attempt") else None
            if rec.state == "STAGING" and task.state == pb.RUNNING and attempt == rec.attempts:
                rec.transition("RUNNING", now, attempt=attempt)
                self._save(rec)
            if task.HasField("usage"):
                self.attempts.usage(rec, attempt, task.usage, slave.id)
            if rec.set_progress(_progress(task.progress), now, attempt=attempt):
                self.store.save_progress(rec.id, rec.progress, now)
                self.events.publish_progress(rec.id, rec.progress, now)

    # -- HTTP -----------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        return dict(self._index.counts)

    def _slave_counts(self) -> dict[str, int]:
        counts = {"active": 0, "disconnected": 0, "lost": 0, "removed": 0}
        for s in self.slaves.values():
            counts[s.state] += 1
        return counts

    def vars_text(self) -> str:
        """`/master/vars`: one `key value` per line (in the mailbox)."""
        now = time.time()
        lines = [("version", VERSION), ("pid", str(self.pid)),
                 ("uptime_secs", f"{now - self._started:.3f}")]
        for state, n in self._slave_counts().items():
            lines.append((f"slaves_{state}", str(n)))
        slaves = [s for s in self.slaves.values() if s.state == "active"]
        lines += [("cpus_total", f"{sum(s.cpus for s in slaves):g}"),
                  ("cpus_used", f"{sum(s.used_cpus for s in slaves):g}"),
                  ("mem_total", f"{sum(s.mem for s in slaves):g}"),
                  ("mem_used", f"{sum(s.used_mem for s in slaves):g}")]
        counts = self._index.counts
        for state, n in counts.items():
            lines.append((f"tasks_{state.lower()}", str(n)))
        lines += [("tasks_total", str(sum(counts.values()))),
                  ("tasks_in_memory", str(len(self.tasks))),
                  ("tasks_ended_in_memory", str(self._index.ended_in_memory)),
                  ("max_completed_tasks", str(self.config.max_completed_tasks)),
                  ("memory_trims", str(self.memory.trimmer.trims))]
        for key, value in self._counters.items():
            lines.append((key, str(value)))
        for key, stat in self.store.stats().items():
            lines.append((f"store_{key}", f"{stat:g}" if isinstance(stat, float) else str(stat)))
        lines.append(("store_fault", " ".join((self.store.fault() or "-").split())))
        lines += [(k, str(v)) for k, v in self.events.stats().items()]
        lines += [(f"gc_{k}", f"{v:g}" if isinstance(v, float) else str(v))
                  for k, v in self.gc.stats().items()]
        return "".join(f"{k} {v}\n" for k, v in lines)

    def state_json(self) -> dict[str, Any]:
        """`/master/state` (in the mailbox)."""
        fault = self.store.fault()
        return {
            "version": VERSION, "pid": str(self.pid), "started_at": self._started,
            "uptime_secs": time.time() - self._started,
            "slaves": self.slaves_json(),
            "task_counts": self._counts(), "slave_counts": self._slave_counts(),
            "store": {"healthy": fault is None, "fault": fault},
        }

    def slaves_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.slaves.values()]

    async def submit(self, specs: list[TaskSpec]) -> list[TaskRecord]:
        """Create tasks atomically and durably (see TaskHttp.submit); from outside the
        mailbox, on the loop's thread. Raises ApiError (422, 503) leaving no task."""
        return await self.http.tasks.submit(specs)

    def _slave_changed(self, slave: SlaveInfo) -> None:
        self.events.publish_slave(slave.to_json())


def _done_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut

