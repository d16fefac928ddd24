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
- Nothing a slave sends counts unless it is signed by the session of its current
  registration (protos/auth.py), and a status update counts only from the slave that holds
  the task's current attempt; everything we send a slave is signed. A first registration is
  not trusted (scheduled on, persisted, published) until the slave confirms it with a signed
  message; a re-registration must be signed with the slave's credential and a growing
  sequence. Refused messages change nothing, are counted (`messages_refused` in /vars,
  `master/messages_refused` in /metrics/snapshot) and logged once per sender and minute.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import libproc
from libproc import UPID, ProtobufProcess, defer, delay
from libproc.future import as_future
from libproc.metrics import metrics
from master import registry, scheduler
from master.api import TaskSpec, shown
from master.registry import SlaveInfo
from master.store import RecordRefused, Store, StoreError
from master.task_http import TaskHttp, error
from master.task_index import TaskIndex, task_key
from master.tasks import ACTIVE_STATES, STATES, TERMINAL_STATES, TaskRecord
from protos import auth
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
        self.tasks: dict[str, TaskRecord] = {}
        self.slaves: dict[str, SlaveInfo] = {}
        self._by_pid: dict[UPID, str] = {}
        # Credential and last re-registration sequence of every slave id we answered
        # (persisted as meta `slave.<id>`, never published).
        self._credentials: dict[str, tuple[bytes, int]] = {}
        self._pending = registry.Pending(ttl=max(10.0, 2 * self.config.slave_timeout))
        self._refusals = auth.Refusals()
        self._registration_key = (auth.registration_key(self.config.secret)
                                  if self.config.secret else None)
        self._slave_seq = 0
        self._launch_seq = 0
        self._last_save: dict[str, asyncio.Future[None]] = {}
        self._dirty: set[str] = set()
        self.http = TaskHttp(self)  # /master/tasks...
        self._started = time.time()
        self._counters = {"status_updates": 0, "status_updates_ignored": 0,
                          "progress_reports": 0, "launches": 0, "registrations_refused": 0,
                          "messages_refused": 0, "scheduling_passes": 0,
                          "slaves_forgotten": 0, "records_refused": 0}
        self._recovering_until: float | None = None
        self._credentials_loaded_at: float | None = None
        self._index = TaskIndex()  # the PENDING queue and launched tasks
        self._schedule_queued = False
        self._schedule_deferred = False  # a pass skipped for a store fault: retried later

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self) -> None:
        self.install(pb.RegisterSlaveMessage, self._register)
        self.install(pb.ReregisterSlaveMessage, self._reregister)
        self.install(pb.StatusUpdateMessage, self._status_update)
        self.install(pb.ReportProgressMessage, self._report_progress)
        self.install(pb.PongSlaveMessage, self._pong)
        self.install(pb.UnregisterSlaveMessage, self._unregister)
        self.route("/vars", self._vars)
        self.route("/state", self._state_json)
        self.route("/slaves", self._slaves_json)
        self.route("/tasks", self.http.handle)
        self.route("/", self._not_found)
        libproc.add_health_check(f"{self.id}.store", self.store.fault)
        self._load_credentials()
        for record in self.store.load_tasks_blocking():
            self.tasks[record.id] = record
            self._index.note(record)
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
        try:
            await self.store.flush()
        except StoreError as exc:
            log.error("final flush failed: %s", exc)

    # -- slaves --------------------------------------------------------------------------

    def _load_credentials(self) -> None:
        for key, value in self.store.load_meta_blocking("slave.").items():
            try:
                data = json.loads(value)
                self._credentials[key[len("slave."):]] = (bytes.fromhex(data["key"]),
                                                          int(data["seq"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a garbled slave credential (%s) in the database", key)
        self._credentials_loaded_at = _now()

    def _remember_credential(self, slave_id: str, credential: bytes, seq: int) -> None:
        self._credentials[slave_id] = (credential, seq)
        self.store.put_meta(f"slave.{slave_id}", json.dumps(
            {"key": credential.hex(), "seq": seq})).add_done_callback(_log_meta_failure)

    def _forget_slave(self, slave_id: str) -> None:
        """Drop a lost slave from the table and its credential (it must register anew)."""
        slave = self.slaves.pop(slave_id, None)
        if slave is not None and self._by_pid.get(slave.pid) == slave_id:
            del self._by_pid[slave.pid]
        if self._credentials.pop(slave_id, None) is not None:
            self.store.delete_meta(f"slave.{slave_id}").add_done_callback(_log_meta_failure)
        self._counters["slaves_forgotten"] += 1

    def _refuse(self, sender: UPID, what: str, why: str) -> None:
        self._counters["messages_refused"] += 1
        metrics.inc("master/messages_refused")
        if self._refusals.refuse(str(sender), _now()):
            log.warning("refused %s from %s: %s (further refusals from this sender are "
                        "logged at most once a minute)", what, sender, why)

    def _refuse_registration(self, sender: UPID, nonce: bytes, why: str, *,
                             unknown: bool = False) -> None:
        self._counters["registrations_refused"] += 1
        self._refuse(sender, "registration", why)
        self.send(sender, pb.RegistrationRefusedMessage(reason=why, nonce=nonce,
                                                        unknown_slave=unknown))

    def _registration_problem(self, resources: pb.Resources, hostname: str,
                              nonce: bytes) -> str | None:
        if len(nonce) < auth.NONCE_BYTES:
            return "no registration nonce: the slave is older than this master; upgrade it"
        if len(hostname) > 255 or "\0" in hostname:
            return "hostname must be at most 255 characters without NUL"
        return registry.check_resources(resources.cpus, resources.mem)

    def _send_slave(self, slave: SlaveInfo, msg: Any) -> None:
        """Every message to a slave goes signed by its session, to its registered UPID."""
        slave.session.seal(msg)
        self.send(slave.pid, msg)

    def _register(self, sender: UPID, msg: pb.RegisterSlaveMessage) -> None:
        why = self._registration_problem(msg.resources, msg.hostname, msg.nonce)
        if why is None and self._registration_key is not None and auth.verify(
                msg, self._registration_key, auth.SLAVE_TO_MASTER) is None:
            why = "wrong or missing secret: start the slave with the cluster's --secret"
        if why is not None:
            self._refuse_registration(sender, msg.nonce, why)
            return
        self._slave_seq += 1
        slave_id = f"{uuid.uuid4().hex[:8]}-S{self._slave_seq}"
        answer = pb.SlaveRegisteredMessage(
            slave_id=pb.SlaveID(value=slave_id), nonce=msg.nonce,
            master_nonce=auth.new_nonce(), heartbeat_interval=self.config.heartbeat_interval)
        if self.config.secret:
            answer.salt = auth.new_nonce()
            credential = auth.slave_key(self.config.secret, slave_id, answer.salt)
        else:
            credential = answer.key = auth.new_key()
        now = _now()
        slave = SlaveInfo(slave_id, sender, msg.resources.cpus, msg.resources.mem,
                          credential, self._session(credential, msg.nonce, answer.master_nonce),
                          msg.hostname, registered_at=now, last_contact=now)
        # Trusted only once it answers with a signed message (see `_authenticate`).
        self._pending.add(slave)
        self._send_slave(slave, answer)

    @staticmethod
    def _session(credential: bytes, slave_nonce: bytes, master_nonce: bytes) -> auth.Session:
        return auth.Session(auth.session_key(credential, slave_nonce, master_nonce),
                            auth.MASTER_TO_SLAVE)

    def _admit(self, slave: SlaveInfo) -> bool:
        """Put a slave into the table, forgetting the oldest lost ones when it is full."""
        if slave.id not in self.slaves:
            room = registry.make_room(self.slaves, self.config.max_slaves)
            if room is None:
                self._refuse(slave.pid, "registration", f"the slave table is full "
                             f"({self.config.max_slaves} slaves that are not lost)")
                return False
            for old in room:
                self._forget_slave(old)
        old_slave = self.slaves.get(slave.id)
        if old_slave is not None and self._by_pid.get(old_slave.pid) == slave.id:
            del self._by_pid[old_slave.pid]
        self.slaves[slave.id] = slave
        self._by_pid[slave.pid] = slave.id
        self.link(slave.pid)
        return True

    def _confirm(self, slave: SlaveInfo) -> bool:
        self._pending.pop(slave.id)
        if not self._admit(slave):
            return False
        self._remember_credential(slave.id, slave.credential, 0)
        log.info("slave %s registered at %s (%g cpus, %g MiB)", slave.id, slave.pid,
                 slave.cpus, slave.mem)
        self._schedule()
        return True

    def _authenticate(self, sender: UPID, slave_id: str, msg: Any,
                      what: str) -> SlaveInfo | None:
        """The registered slave that signed `msg`, marked as just heard from; None (and
        the message counted as refused) when no slave's current session signed it."""
        slave = self.slaves.get(slave_id)
        pending = None
        if slave is None:
            slave = pending = self._pending.get(slave_id)
        if slave is None or slave.pid != sender or not slave.session.open(msg):
            self._refuse(sender, what, "not signed by the session of a registered slave "
                         "at that UPID")
            if slave is None and not isinstance(msg, pb.UnregisterSlaveMessage):
                # Maybe a slave of ours from before a restart: tell it to re-register.
                # Unsigned, so it only ever triggers an (authenticated) re-registration.
                self.send(sender, pb.PingSlaveMessage(connected=False))
            return None
        if pending is not None and not self._confirm(pending):
            return None
        slave.last_contact = _now()
        if slave.state == "disconnected":
            slave.state, slave.disconnected_at = "active", None
        return slave

    def _reregister(self, sender: UPID, msg: pb.ReregisterSlaveMessage) -> None:
        slave_id = msg.slave_id.value
        known = self._credentials.get(slave_id)
        why = self._registration_problem(msg.resources, msg.hostname, msg.nonce)
        if why is not None:
            self._refuse_registration(sender, msg.nonce, why)
            return
        if known is None:
            why = f"unknown slave id {slave_id!r} (removed, or from another master): register anew"
        elif auth.verify(msg, known[0], auth.SLAVE_TO_MASTER) != msg.sequence:
            why = f"re-registration of {slave_id} is not signed with its credential"
        elif msg.sequence <= known[1]:
            why = (f"re-registration of {slave_id} is stale or replayed (sequence "
                   f"{msg.sequence}, last {known[1]})")
        if why is not None or known is None:
            self._refuse_registration(sender, msg.nonce, why or "", unknown=True)
            return
        credential = known[0]
        answer = pb.SlaveReregisteredMessage(
            slave_id=pb.SlaveID(value=slave_id), nonce=msg.nonce, master_nonce=auth.new_nonce(),
            heartbeat_interval=self.config.heartbeat_interval)
        now = _now()
        slave = SlaveInfo(slave_id, sender, msg.resources.cpus, msg.resources.mem, credential,
                          self._session(credential, msg.nonce, answer.master_nonce),
                          msg.hostname, registered_at=now, last_contact=now)
        if not self._admit(slave):
            return
        self._remember_credential(slave_id, credential, msg.sequence)
        kill: list[str] = []
        reported = set()
        for running in msg.tasks:
            tid = running.task.task_id.value
            attempt = running.task.attempt
            reported.add(tid)
            rec = self.tasks.get(tid)
            if running.state in (pb.FINISHED, pb.FAILED, pb.KILLED, pb.LOST):
                continue  # ended while we were away; its status update follows
            if rec is None or rec.is_terminal or rec.attempts != attempt or (
                    rec.slave_id not in (None, slave_id)):
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
            if rec.slave_id == slave_id and rec.id not in reported:
                self._task_lost(rec, f"slave {slave_id} re-registered without task {rec.id}",
                                now)
        log.info("slave %s re-registered at %s with %d tasks (%d to kill)", slave_id, sender,
                 len(msg.tasks), len(kill))
        self._maybe_end_recovery()
        answer.kill_tasks.extend(pb.TaskID(value=t) for t in kill)
        self._send_slave(slave, answer)
        self._schedule()

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
        slave = self._authenticate(sender, msg.slave_id.value, msg, "pong")
        if slave is not None and slave.state in ("lost", "removed"):
            self._send_slave(slave, pb.PingSlaveMessage(connected=False))

    def _unregister(self, sender: UPID, msg: pb.UnregisterSlaveMessage) -> None:
        slave = self._authenticate(sender, msg.slave_id.value, msg, "unregister")
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
        self._schedule()

    def _task_lost(self, rec: TaskRecord, reason: str, now: float) -> None:
        self._release(rec)
        if rec.transition("LOST", now, message=reason):
            if rec.requeue(now):
                log.info("task %s lost (%s); re-queued", rec.id, reason)
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
        self._pending.expire(now)
        for slave_id in registry.expired(self.slaves.values(), now,
                                         self.config.slave_retention):
            self._forget_slave(slave_id)
        if (self._credentials_loaded_at is not None
                and now - self._credentials_loaded_at > self.config.slave_retention):
            # Credentials from before a restart whose slaves never came back.
            self._credentials_loaded_at = None
            for slave_id in [i for i in self._credentials if i not in self.slaves]:
                self._forget_slave(slave_id)
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
        pending = self._index.pending(self.tasks)
        if not pending:
            return
        free = [scheduler.FreeResources(s.id, s.cpus - s.used_cpus, s.mem - s.used_mem)
                for s in self.slaves.values() if s.state == "active"]
        if not free:
            return
        assignments = scheduler.schedule(pending, free, spread=True)
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
        self._send_slave(slave, pb.LaunchTasksMessage(
            id=self._launch_seq & 0x7FFFFFFF, tasks=infos, slave_id=pb.SlaveID(value=slave_id)))

    def _save(self, rec: TaskRecord) -> asyncio.Future[None]:
        # Every state change is saved, so this is where the indexes learn of it.
        self._index.note(rec)
        fut = self.store.save(rec)
        self._last_save[rec.id] = fut
        fut.add_done_callback(functools.partial(self._forget_save, rec.id))
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
        slave = self._authenticate(sender, update.slave_id.value, msg, "status update")
        if slave is None:
            return
        self._counters["status_updates"] += 1
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
            if state in TERMINAL_STATES:
                self._release(rec)
                if state in ("FAILED", "LOST") and rec.requeue(now):
                    log.info("task %s %s (%s); re-queued, attempt %d of %d", tid, state,
                             rec.message, rec.attempts + 1, rec.retries + 1)
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
            lambda f: None if (f.cancelled() or f.exception()) else self._ack(slave, ack))

    def _ack(self, slave: SlaveInfo, ack: pb.StatusUpdateAcknowledgementMessage) -> None:
        # Runs between events (a future's callback): signed with the slave's session as
        # it is now, which is the one the slave holds unless it re-registered meanwhile.
        current = self.slaves.get(slave.id)
        if current is not None:
            self._send_slave(current, ack)

    def _report_progress(self, sender: UPID, msg: pb.ReportProgressMessage) -> None:
        slave = self._authenticate(sender, msg.slave_id.value, msg, "progress report")
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
            if rec.set_progress(_progress(task.progress), now, attempt=attempt):
                self.store.save_progress(rec.id, rec.progress, now)

    # -- HTTP -----------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for t in self.tasks.values():
            counts[t.state] += 1
        return counts

    def _slave_counts(self) -> dict[str, int]:
        counts = {"active": 0, "disconnected": 0, "lost": 0, "removed": 0}
        for s in self.slaves.values():
            counts[s.state] += 1
        return counts

    def _vars(self, request: web.BaseRequest) -> web.Response:
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
        for state, n in self._counts().items():
            lines.append((f"tasks_{state.lower()}", str(n)))
        lines.append(("tasks_total", str(len(self.tasks))))
        for key, value in self._counters.items():
            lines.append((key, str(value)))
        for key, stat in self.store.stats().items():
            lines.append((f"store_{key}", f"{stat:g}" if isinstance(stat, float) else str(stat)))
        lines.append(("store_fault", " ".join((self.store.fault() or "-").split())))
        text = "".join(f"{k} {v}\n" for k, v in lines)
        return web.Response(text=text, content_type="text/plain")

    def _state_json(self, request: web.BaseRequest) -> web.Response:
        fault = self.store.fault()
        return web.json_response({
            "version": VERSION, "pid": str(self.pid), "started_at": self._started,
            "uptime_secs": time.time() - self._started,
            "slaves": [s.to_json() for s in self.slaves.values()],
            "task_counts": self._counts(), "slave_counts": self._slave_counts(),
            "store": {"healthy": fault is None, "fault": fault},
        })

    def _slaves_json(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"slaves": [s.to_json() for s in self.slaves.values()]})

    def _not_found(self, request: web.BaseRequest) -> web.Response:
        return _error(404, f"no endpoint {request.method} {shown(request.path, 80)}; see "
                      "/master/state, /master/tasks, /master/slaves, /master/vars")

    async def submit(self, specs: list[TaskSpec]) -> list[TaskRecord]:
        """Create tasks atomically and durably (see TaskHttp.submit); from outside the
        mailbox, on the loop's thread. Raises ApiError (422, 503) leaving no task."""
        return await self.http.submit(specs)

    def _authorized(self, request: web.BaseRequest) -> bool:
        """The API secret, when set, as `Authorization: Bearer …` or `X-Cluster-Secret`;
        compared in constant time (on bytes: headers may carry any byte)."""
        if self.config.secret is None:
            return True
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.headers.get(
            "X-Cluster-Secret", "")
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                   self.config.secret.encode("utf-8", "surrogateescape"))

def _log_meta_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not persist a slave credential: %s", fut.exception())


def _done_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


_error = error
