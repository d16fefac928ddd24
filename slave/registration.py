"""The slave's registration with its master, and the authentication of what they exchange.

`Registration(slave)` is a helper object owned by the `Slave` actor: every method runs on the
actor's loop, inside its mailbox (as message handlers, or called by the actor's own
handlers), so it shares the actor's state without locks. What it does, as the slave's
contract:

- Registration is retried with capped exponential backoff until the master answers; after
  a broken link (or a master that says it does not know us) it re-registers with its
  slave id and its running tasks, so a restarted master recovers them.
- A registration answer counts only when it echoes the nonce of one of our own attempts;
  every later message from the master must come from its UPID and carry a valid MAC of the
  current session (protos/auth.py), and everything we send carries ours.
- The credential from the first registration is kept in `slave.json` (mode 0600) so that a
  restarted slave can re-register under its id; a re-registration's sequence is saved
  before it is sent, so one the master saw is never reused.
- Refused messages change nothing; they are counted (`commands_refused`,
  `/metrics/snapshot` `slave/messages_refused`) and logged once per sender and minute.
- Under `--master zk://…` (`follower` set, slave/leader.py) the master is whichever one
  ZooKeeper names: a new leader (or the same master leading anew) means re-registering with
  it, running tasks and unacknowledged updates included. A standby's `NotLeaderMessage`
  only makes the follower look in ZooKeeper again; without a follower it is logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libproc
from libproc import UPID, delay
from libproc.metrics import metrics
from protos import auth
from protos import cluster_pb2 as pb
from protos.leader_info import LeaderInfo

if TYPE_CHECKING:
    from slave.leader import LeaderFollower
    from slave.process import Slave

__all__ = ["VERSION", "Registration"]

log = logging.getLogger("slave")
VERSION = "0.1.0"


class Registration:
    """Registers one slave with its master and checks what the master sends it."""

    def __init__(self, slave: Slave) -> None:
        self.slave = slave
        # Our registration attempts the master may still answer: nonce -> "register" or
        # "reregister", oldest first; an answer retires its attempt and every older one.
        self._attempts: OrderedDict[bytes, str] = OrderedDict()
        self._refusals = auth.Refusals()
        self._last_hint = -1e9  # when an unsigned "re-register" ping was last obeyed
        self._backoff = 0.25
        self._register_timer: libproc.Timer | None = None
        self.last_master_contact = 0.0
        self.follower: LeaderFollower | None = None  # set under --master zk://...
        self._leader_member: str | None = None  # the leader's znode, as last followed
        self._standby_warnings = auth.Refusals()

    def install(self) -> None:
        """Install the registration messages' handlers on the slave (in its initialize)."""
        s = self.slave
        s.install(pb.SlaveRegisteredMessage, self._registered)
        s.install(pb.SlaveReregisteredMessage, self._reregistered)
        s.install(pb.RegistrationRefusedMessage, self._refused)
        s.install(pb.PingSlaveMessage, self._ping)
        s.install(pb.NotLeaderMessage, self._not_leader)

    # -- identity (slave.json) -------------------------------------------------------------

    def _identity_file(self) -> Path:
        return self.slave.config.work_dir / "slave.json"

    def load_identity(self) -> None:
        """Our slave id, credential and sequence from `slave.json`; without a credential
        (a file from an older version, or a garbled one) we register anew."""
        s = self.slave
        try:
            data = json.loads(self._identity_file().read_text())
            slave_id, key, seq = data.get("slave_id"), data.get("key"), data.get("sequence", 0)
            if (isinstance(slave_id, str) and slave_id and isinstance(key, str)
                    and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
                s.slave_id, s.credential, s.sequence = slave_id, bytes.fromhex(key), seq
        except (OSError, ValueError, AttributeError):
            pass

    def _save_identity(self) -> None:
        """Written before each re-registration is sent, so a sequence is never reused."""
        s = self.slave
        path = self._identity_file()
        tmp = path.with_suffix(".tmp")
        try:
            identity: dict[str, Any] = {"slave_id": s.slave_id, "master": str(s.config.master)}
            if s.credential is not None:
                identity["key"] = s.credential.hex()
                identity["sequence"] = s.sequence
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(identity))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not record the slave id in %s: %s", path, exc)

    def _forget_identity(self) -> None:
        s = self.slave
        s.slave_id, s.credential, s.sequence, s.session = None, None, 0, None
        try:
            self._identity_file().unlink()
        except OSError:
            pass

    # -- registering -----------------------------------------------------------------------

    def restart(self, *, reset_backoff: bool = True) -> None:
        """Go back to registering (the master is away, or does not know us) and try now."""
        self.slave.mode = "registering"
        if reset_backoff:
            self._backoff = 0.25
        self.register()

    def register(self) -> None:
        s = self.slave
        if s.mode != "registering":
            return
        s._counters["registrations"] += 1
        master = s.config.master
        s.link(master, relink=True)
        resources = pb.Resources(cpus=s.config.cpus, mem=s.config.mem)
        hostname = s.config.hostname or socket.gethostname()
        assert s.executor is not None
        iso = s.executor.isolator
        isolation = pb.Isolation(mode=iso.mode, cgroup_version=iso.version,
                                 cpu_limit=iso.cpu_limit, task_pids_max=iso.pids_max)
        nonce = auth.new_nonce()
        if s.slave_id is None or s.credential is None:
            s.slave_id = None
            msg: Any = pb.RegisterSlaveMessage(resources=resources, hostname=hostname,
                                               version=VERSION, nonce=nonce,
                                               isolation=isolation)
            if s.config.secret:
                auth.seal(msg, auth.registration_key(s.config.secret),
                          auth.SLAVE_TO_MASTER, 1)
            self._remember_attempt(nonce, "register")
        else:
            running = []
            progress = s.executor.progress()
            for info in s.tasks.values():
                running.append(pb.RunningTask(task=info, state=pb.RUNNING,
                                              progress=progress.get(info.task_id.value, 0.0)))
            # Tasks that ended while the master was away: their (re-sent) status update
            # settles them, so the master must not declare them lost meanwhile.
            for update in s.unacked.values():
                if update.state != pb.RUNNING and update.task_id.value not in s.tasks:
                    running.append(pb.RunningTask(
                        task=pb.TaskInfo(name="", task_id=update.task_id, command="",
                                         attempt=update.attempt),
                        state=update.state, progress=update.progress))
            s.sequence += 1
            self._save_identity()  # before sending: a sequence the master saw is never reused
            msg = pb.ReregisterSlaveMessage(
                slave_id=pb.SlaveID(value=s.slave_id), resources=resources,
                tasks=running, hostname=hostname, version=VERSION, nonce=nonce,
                sequence=s.sequence, isolation=isolation)
            auth.seal(msg, s.credential, auth.SLAVE_TO_MASTER, s.sequence)
            self._remember_attempt(nonce, "reregister")
        s.send(master, msg)
        # One retry chain at a time: a retry still armed from an earlier chain is replaced.
        if self._register_timer is not None:
            self._register_timer.cancel()
        self._register_timer = delay(self._backoff, s.pid, self.register)
        self._backoff = min(self._backoff * 2, s.config.max_backoff)

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

    # -- authentication --------------------------------------------------------------------

    def refuse(self, sender: UPID, what: str) -> None:
        self.slave._counters["commands_refused"] += 1
        metrics.inc("slave/messages_refused")
        if self._refusals.refuse(str(sender), libproc.Clock.now()):
            log.warning("refused %s from %s: not from our master, or not signed by our "
                        "current session (further refusals from it this minute not logged)",
                        what, sender)

    def from_master(self, sender: UPID, msg: Any, what: str) -> bool:
        """A command counts only from our master's UPID and signed by our session."""
        s = self.slave
        if sender == s.config.master and s.session is not None and s.session.open(msg):
            self.last_master_contact = libproc.Clock.now()
            return True
        self.refuse(sender, what)
        return False

    def send_master(self, msg: Any) -> None:
        s = self.slave
        assert s.session is not None
        s.session.seal(msg)
        s.send(s.config.master, msg)

    def _became_registered(self, slave_id: str, credential: bytes, session: auth.Session,
                           what: str) -> None:
        s = self.slave
        first = s.slave_id != slave_id or s.credential != credential
        if s.mode == "registering":
            log.info("%s with %s as %s", what, s.config.master, slave_id)
        s.slave_id, s.credential, s.session = slave_id, credential, session
        s.mode = "registered"
        self._backoff = 0.25
        if self._register_timer is not None:
            self._register_timer.cancel()
            self._register_timer = None
        self.last_master_contact = libproc.Clock.now()
        if first:
            s.sequence = 0
            self._save_identity()
        # Confirms the session at once: the master schedules nothing on us before this.
        self.send_master(pb.PongSlaveMessage(slave_id=pb.SlaveID(value=slave_id)))
        s._resend_updates()

    def _answer_session(self, sender: UPID, msg: Any, kind: str) -> tuple[bytes, auth.Session]:
        """Check a registration answer; (credential, session), or raises ValueError."""
        s = self.slave
        if sender != s.config.master:
            raise ValueError(f"it is not from our master {s.config.master}")
        if self._answered(msg.nonce) != kind:
            raise ValueError("it answers none of our registration attempts")
        slave_id = msg.slave_id.value
        if kind == "reregister":
            if slave_id != s.slave_id or s.credential is None:
                raise ValueError(f"it names slave {slave_id!r}, we are {s.slave_id!r}")
            credential = s.credential
        elif s.config.secret:
            if not msg.salt:
                raise ValueError("the master runs without a secret, but this slave was "
                                 "given one; give both the same --secret, or neither")
            credential = auth.slave_key(s.config.secret, slave_id, msg.salt)
        else:
            credential = msg.key
        if len(credential) < 16 or not slave_id:
            raise ValueError("it carries no usable credential")
        session = auth.Session(auth.session_key(credential, msg.nonce, msg.master_nonce),
                               auth.SLAVE_TO_MASTER)
        if not session.open(msg):
            raise ValueError("its signature does not match (wrong --secret?)")
        return credential, session

    # -- the master's answers --------------------------------------------------------------

    def _registered(self, sender: UPID, msg: pb.SlaveRegisteredMessage) -> None:
        try:
            credential, session = self._answer_session(sender, msg, "register")
        except ValueError as exc:
            self.refuse(sender, f"registration answer ({exc})")
            return
        self._became_registered(msg.slave_id.value, credential, session, "registered")

    def _reregistered(self, sender: UPID, msg: pb.SlaveReregisteredMessage) -> None:
        try:
            credential, session = self._answer_session(sender, msg, "reregister")
        except ValueError as exc:
            self.refuse(sender, f"re-registration answer ({exc})")
            return
        s = self.slave
        assert s.executor is not None
        for tid in msg.kill_tasks:
            log.info("master no longer wants task %s: killing it", tid.value)
            s.tasks.pop(tid.value, None)
            s.executor.kill(tid.value)
        self._became_registered(msg.slave_id.value, credential, session, "re-registered")

    def _refused(self, sender: UPID, msg: pb.RegistrationRefusedMessage) -> None:
        s = self.slave
        kind = self._answered(msg.nonce) if sender == s.config.master else None
        if kind is None:
            self.refuse(sender, "registration refusal")
            return
        log.error("master %s refused our %s: %s", sender,
                  "registration" if kind == "register" else "re-registration", msg.reason)
        if kind == "reregister" and msg.unknown_slave:
            # The master does not know our id or credential (its database was reset, or we
            # were removed): what we run is unknown to it. Start over as a new slave.
            log.warning("registering anew: killing %d task(s) the master does not know",
                        len(s.tasks))
            assert s.executor is not None
            for tid in list(s.tasks):
                s.executor.kill(tid)
            s.tasks.clear()
            s.unacked.clear()
            s._resend_at.clear()
            self._forget_identity()
            self._backoff = 0.25
            self.register()

    def _ping(self, sender: UPID, msg: pb.PingSlaveMessage) -> None:
        s = self.slave
        if sender != s.config.master:
            self.refuse(sender, "ping")
            return
        if s.session is None or not s.session.open(msg):
            # An unsigned "who are you?" (a master that lost our session, or anyone else):
            # re-registering is authenticated and harmless, so obey it, but rarely.
            now = libproc.Clock.now()
            if (not msg.connected and s.mode == "registered"
                    and now - self._last_hint >= s.config.max_backoff):
                self._last_hint = now
                log.info("master asks us to re-register (unsigned ping): re-registering")
                self.restart(reset_backoff=False)
            return
        self.last_master_contact = libproc.Clock.now()
        if not msg.connected and s.mode == "registered":
            log.info("master does not know us (it restarted or declared us lost): "
                     "re-registering")
            self.restart(reset_backoff=False)
            return
        if s.mode == "registered":
            self.send_master(pb.PongSlaveMessage(slave_id=pb.SlaveID(value=s.slave_id or "")))

    # -- following the leader (--master zk://...) -----------------------------------------

    def leader_changed(self, leader: LeaderInfo | None, member: str | None) -> None:
        """The follower's news, in the mailbox: another leader (or a new term of the same
        master, a new member) means re-registering with it; nobody leading keeps the last
        master (it may still be there)."""
        s = self.slave
        if leader is None:
            return
        upid = leader.upid
        if upid == s.config.master and member == self._leader_member:
            return
        first = self._leader_member is None and upid == s.config.master
        old, self._leader_member = s.config.master, member
        if first:
            return  # the leader we started with, now with its member known
        s.config.master = upid
        if s.mode == "shutting_down":
            return
        log.info("the leading master is now %s (was %s): %s", upid, old,
                 "re-registering" if s.slave_id else "registering")
        self.restart()

    def _not_leader(self, sender: UPID, msg: pb.NotLeaderMessage) -> None:
        """A master says it does not lead. Unsigned: it only sends us to ZooKeeper."""
        metrics.inc("slave/not_leader_hints")
        if self.follower is not None:
            if self.follower.refresh():
                log.info("%s says it does not lead%s: looking the leader up in ZooKeeper "
                         "again", sender, f" (it names {shown_pid(msg.leader)})"
                         if msg.leader else "")
        elif self._standby_warnings.refuse(str(sender), libproc.Clock.now()):
            log.warning("%s says it is a standby master that does not lead%s; start this "
                        "slave with --master zk://HOST:PORT/PATH to follow the leader", sender,
                        f" (it names {shown_pid(msg.leader)})" if msg.leader else "")


def shown_pid(text: str) -> str:
    """A UPID a peer sent, safe to log (bounded, printable)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:200])
    return clean + ("..." if len(text) > 200 else "")
