"""Who may be a slave: registration, re-registration and the authentication of every message.

`Registrar(master)` is part of the master actor (its methods run in the master's mailbox;
it owns the credentials and the unconfirmed registrations, the master owns the slave table).
Contract (the protocol is in protos/auth.py):

- A first registration offering finite, positive resources (and, with a cluster secret,
  signed with it) is answered at once but trusted — scheduled on, persisted, published —
  only when the slave confirms it with a message signed by the new session (`authenticate`).
  Unconfirmed registrations are bounded (`registry.Pending`).
- A re-registration counts only when signed with the slave's credential and carrying a
  sequence above the last one seen (persisted with the credential as meta `slave.<id>`), so
  neither a forgery nor a replay can replace a slave's session or declare its tasks lost;
  a refused one is told `unknown_slave` (in an answer to its own nonce) and registers anew.
- `authenticate` accepts a message only from the UPID of a registered slave, signed by its
  current session; refusals change nothing, are counted and logged once per sender a minute.
- Credentials are never published; a slave forgotten (lost past the retention, or evicted
  from a full table) loses its credential too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import libproc
from libproc import UPID
from libproc.metrics import metrics
from master import registry
from master.registry import SlaveInfo
from protos import auth
from protos import cluster_pb2 as pb

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["Registrar"]

log = logging.getLogger("master")


def _now() -> float:
    return libproc.Clock.now()


class Registrar:
    """The slave registration and authentication of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        # Credential and last re-registration sequence of every slave id we answered.
        self.credentials: dict[str, tuple[bytes, int]] = {}
        self.pending = registry.Pending(ttl=max(10.0, 2 * master.config.slave_timeout))
        self.refusals = auth.Refusals()
        secret = master.config.secret
        self.registration_key = auth.registration_key(secret) if secret else None
        self.slave_seq = 0  # registrations answered (makes slave ids unique)
        self.loaded_at: float | None = None  # credentials read at start, not yet pruned

    # -- credentials -----------------------------------------------------------------------

    def load(self) -> None:
        """Read the credentials the database holds (start-up, blocking)."""
        for key, value in self.master.store.load_meta_blocking("slave.").items():
            try:
                data = json.loads(value)
                self.credentials[key[len("slave."):]] = (bytes.fromhex(data["key"]),
                                                         int(data["seq"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a garbled slave credential (%s) in the database", key)
        self.loaded_at = _now()

    def _remember(self, slave_id: str, credential: bytes, seq: int) -> None:
        self.credentials[slave_id] = (credential, seq)
        self.master.store.put_meta(f"slave.{slave_id}", json.dumps(
            {"key": credential.hex(), "seq": seq})).add_done_callback(_log_meta_failure)

    def forget(self, slave_id: str) -> None:
        """Drop a lost slave from the table and its credential (it must register anew)."""
        m = self.master
        slave = m.slaves.pop(slave_id, None)
        if slave is not None and m._by_pid.get(slave.pid) == slave_id:
            del m._by_pid[slave.pid]
        if self.credentials.pop(slave_id, None) is not None:
            m.store.delete_meta(f"slave.{slave_id}").add_done_callback(_log_meta_failure)
        m._counters["slaves_forgotten"] += 1

    def expire(self, now: float) -> None:
        """Heartbeat work: unconfirmed registrations past their time, lost slaves past the
        retention, and credentials from before a restart whose slaves never came back."""
        m = self.master
        self.pending.expire(now)
        for slave_id in registry.expired(m.slaves.values(), now, m.config.slave_retention):
            self.forget(slave_id)
        if self.loaded_at is not None and now - self.loaded_at > m.config.slave_retention:
            self.loaded_at = None
            for slave_id in [i for i in self.credentials if i not in m.slaves]:
                self.forget(slave_id)

    # -- refusals --------------------------------------------------------------------------

    def refuse(self, sender: UPID, what: str, why: str) -> None:
        self.master._counters["messages_refused"] += 1
        metrics.inc("master/messages_refused")
        if self.refusals.refuse(str(sender), _now()):
            log.warning("refused %s from %s: %s (further refusals from this sender are "
                        "logged at most once a minute)", what, sender, why)

    def _refuse_registration(self, sender: UPID, nonce: bytes, why: str, *,
                             unknown: bool = False) -> None:
        self.master._counters["registrations_refused"] += 1
        self.refuse(sender, "registration", why)
        self.master.send(sender, pb.RegistrationRefusedMessage(reason=why, nonce=nonce,
                                                               unknown_slave=unknown))

    @staticmethod
    def _problem(resources: pb.Resources, hostname: str, nonce: bytes) -> str | None:
        if len(nonce) < auth.NONCE_BYTES:
            return "no registration nonce: the slave is older than this master; upgrade it"
        if len(hostname) > 255 or "\0" in hostname:
            return "hostname must be at most 255 characters without NUL"
        return registry.check_resources(resources.cpus, resources.mem)

    @staticmethod
    def _session(credential: bytes, slave_nonce: bytes, master_nonce: bytes) -> auth.Session:
        return auth.Session(auth.session_key(credential, slave_nonce, master_nonce),
                            auth.MASTER_TO_SLAVE)

    # -- handlers (installed by the master) ------------------------------------------------

    def register(self, sender: UPID, msg: pb.RegisterSlaveMessage) -> None:
        m = self.master
        why = self._problem(msg.resources, msg.hostname, msg.nonce)
        if why is None and self.registration_key is not None and auth.verify(
                msg, self.registration_key, auth.SLAVE_TO_MASTER) is None:
            why = "wrong or missing secret: start the slave with the cluster's --secret"
        if why is not None:
            self._refuse_registration(sender, msg.nonce, why)
            return
        self.slave_seq += 1
        slave_id = f"{uuid.uuid4().hex[:8]}-S{self.slave_seq}"
        answer = pb.SlaveRegisteredMessage(
            slave_id=pb.SlaveID(value=slave_id), nonce=msg.nonce,
            master_nonce=auth.new_nonce(), heartbeat_interval=m.config.heartbeat_interval)
        if m.config.secret:
            answer.salt = auth.new_nonce()
            credential = auth.slave_key(m.config.secret, slave_id, answer.salt)
        else:
            credential = answer.key = auth.new_key()
        now = _now()
        slave = SlaveInfo(slave_id, sender, msg.resources.cpus, msg.resources.mem,
                          credential, self._session(credential, msg.nonce, answer.master_nonce),
                          msg.hostname, registered_at=now, last_contact=now,
                          isolation=registry.isolation_of(msg))
        # Trusted only once it answers with a signed message (see `authenticate`).
        self.pending.add(slave)
        m._send_slave(slave, answer)

    def reregister(self, sender: UPID, msg: pb.ReregisterSlaveMessage) -> None:
        m = self.master
        slave_id = msg.slave_id.value
        known = self.credentials.get(slave_id)
        why = self._problem(msg.resources, msg.hostname, msg.nonce)
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
            heartbeat_interval=m.config.heartbeat_interval)
        now = _now()
        slave = SlaveInfo(slave_id, sender, msg.resources.cpus, msg.resources.mem, credential,
                          self._session(credential, msg.nonce, answer.master_nonce),
                          msg.hostname, registered_at=now, last_contact=now,
                          isolation=registry.isolation_of(msg))
        if not self._admit(slave):
            return
        self._remember(slave_id, credential, msg.sequence)
        kill = m._adopt_tasks(slave, list(msg.tasks))
        log.info("slave %s re-registered at %s with %d tasks (%d to kill)", slave_id, sender,
                 len(msg.tasks), len(kill))
        answer.kill_tasks.extend(pb.TaskID(value=t) for t in kill)
        m._send_slave(slave, answer)
        m._slave_changed(slave)
        m._schedule()

    def authenticate(self, sender: UPID, slave_id: str, msg: Any,
                     what: str) -> SlaveInfo | None:
        """The registered slave that signed `msg`, marked as just heard from; None (and
        the message counted as refused) when no slave's current session signed it."""
        m = self.master
        slave = m.slaves.get(slave_id)
        pending = None
        if slave is None:
            slave = pending = self.pending.get(slave_id)
        if slave is None or slave.pid != sender or not slave.session.open(msg):
            self.refuse(sender, what, "not signed by the session of a registered slave "
                        "at that UPID")
            if slave is None and not isinstance(msg, pb.UnregisterSlaveMessage):
                # Maybe a slave of ours from before a restart: tell it to re-register.
                # Unsigned, so it only ever triggers an (authenticated) re-registration.
                m.send(sender, pb.PingSlaveMessage(connected=False))
            return None
        if pending is not None and not self._confirm(pending):
            return None
        slave.last_contact = _now()
        if slave.state == "disconnected":
            slave.state, slave.disconnected_at = "active", None
            m._slave_changed(slave)
        return slave

    # -- the table -------------------------------------------------------------------------

    def _admit(self, slave: SlaveInfo) -> bool:
        """Put a slave into the table, forgetting the oldest lost ones when it is full."""
        m = self.master
        if slave.id not in m.slaves:
            room = registry.make_room(m.slaves, m.config.max_slaves)
            if room is None:
                self.refuse(slave.pid, "registration", f"the slave table is full "
                            f"({m.config.max_slaves} slaves that are not lost)")
                return False
            for old in room:
                self.forget(old)
        old_slave = m.slaves.get(slave.id)
        if old_slave is not None and m._by_pid.get(old_slave.pid) == slave.id:
            del m._by_pid[old_slave.pid]
        m.slaves[slave.id] = slave
        m._by_pid[slave.pid] = slave.id
        m.link(slave.pid)
        return True

    def _confirm(self, slave: SlaveInfo) -> bool:
        m = self.master
        self.pending.pop(slave.id)
        if not self._admit(slave):
            return False
        self._remember(slave.id, slave.credential, 0)
        log.info("slave %s registered at %s (%g cpus, %g MiB, isolation %s%s)", slave.id,
                 slave.pid, slave.cpus, slave.mem, slave.isolation.get("isolation") or "?",
                 f" {slave.isolation['cgroup_version']}"
                 if slave.isolation.get("cgroup_version") else "")
        m._slave_changed(slave)
        m._schedule()
        return True


def _log_meta_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not persist a slave credential: %s", fut.exception())
