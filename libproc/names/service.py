"""NameService: the libproc process (`names`) that knows which service instances are online.

Embed it in any program with one line, `libproc.spawn(NameService(secret=...))`, or run it on
its own with `python -m libproc.names --port P`. Its protocol is libproc/names.proto; the
per-OS-process names client (client.py) speaks it for local processes.

Contract:
- A registration (RegisterRequest) comes from a names client and names an instance whose
  UPID is at the client's own address. It is refused, with a reason, when the secret is
  wrong or missing (if the service has one), the name is malformed, the UPID is at another
  address, or another UPID holds the name (unless `replace` is set: that one goes Offline).
  Registering again with the same UPID is harmless (it updates the user data).
- The service links every client it knows: when the link breaks (the client's OS process
  died: immediate on a closed socket) all of the client's instances go Offline. It also pings
  every client each `heartbeat_interval`; a client that has not been heard from within
  `heartbeat_timeout` (a stopped or hung process whose socket stays open) is evicted: its
  instances go Offline, its watches are dropped, and it is sent `Evicted` so that, if it
  ever resumes, it registers and watches again.
- A watcher gets a WatchSnapshot, then one InstanceNotice per change matching any of its
  queries, in order (one connection per peer keeps them FIFO).
- Restart: the service keeps no state on disk. For `recovery` seconds after it starts, its
  snapshots say `recovering` (instances may still be re-registering, so watchers keep those
  they knew); at the end it sends every watcher a complete snapshot of each of its queries,
  and watchers drop what is missing. Clients re-register and re-watch by themselves.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from libproc.clock import Clock, Timer
from libproc.delay import delay
from libproc.errors import InvalidUPIDError
from libproc.metrics import metrics
from libproc.names import names_pb2 as pb
from libproc.names.model import (
    OFFLINE,
    ONLINE,
    Instance,
    InvalidNameError,
    matches,
    parse_name,
    parse_query,
)
from libproc.pid import UPID
from libproc.protobuf import ProtobufProcess

__all__ = ["NameService", "DEFAULT_ID", "to_pb", "from_pb"]

log = logging.getLogger("libproc.names")

DEFAULT_ID = "names"


def to_pb(inst: Instance) -> pb.Instance:
    return pb.Instance(name=inst.name, pid=str(inst.pid), user_data=inst.user_data)


def from_pb(msg: pb.Instance) -> Instance:
    """An Instance from its message; raises InvalidUPIDError for a bad pid."""
    return Instance(msg.name, UPID.parse(msg.pid), msg.user_data)


@dataclass
class _Client:
    pid: UPID
    last_heard: float
    names: set[str] = field(default_factory=set)
    queries: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class _Entry:
    instance: Instance
    parts: tuple[str, ...]
    client: UPID


class NameService(ProtobufProcess):
    """The name service process; see the module docstring for its contract."""

    def __init__(
        self,
        id: str = DEFAULT_ID,  # noqa: A002
        *,
        secret: str | None = None,
        heartbeat_timeout: float = 5.0,
        heartbeat_interval: float | None = None,
        recovery: float = 3.0,
    ) -> None:
        super().__init__(id)
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be > 0 seconds, not {heartbeat_timeout}")
        self.secret = secret or None
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.heartbeat_interval = float(heartbeat_interval or heartbeat_timeout / 3)
        self.recovery = max(0.0, float(recovery))
        self.incarnation = uuid.uuid4().hex[:12]
        self.recovering = self.recovery > 0
        self._instances: dict[str, _Entry] = {}
        self._clients: dict[UPID, _Client] = {}
        self._ping_seq = 0
        self._timers: list[Timer] = []

    # -- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        self.install(pb.RegisterRequest, self._register)
        self.install(pb.UnregisterRequest, self._unregister)
        self.install(pb.WatchRequest, self._watch)
        self.install(pb.UnwatchRequest, self._unwatch)
        self.install(pb.Pong, self._pong)
        self.route("/instances", self._http_instances,
                   "JSON: every registered instance and every client")
        metrics.gauge(f"{self.id}/instances", lambda: len(self._instances))
        metrics.gauge(f"{self.id}/clients", lambda: len(self._clients))
        self._timers.append(delay(self.heartbeat_interval, self.pid, self._tick))
        if self.recovering:
            self._timers.append(delay(self.recovery, self.pid, self._end_recovery))
        log.info("name service %s started (incarnation %s, heartbeat timeout %.1fs%s)",
                 self.pid, self.incarnation, self.heartbeat_timeout,
                 ", secret required" if self.secret else "")

    def finalize(self) -> None:
        for t in self._timers:
            t.cancel()
        metrics.remove(f"{self.id}/instances")
        metrics.remove(f"{self.id}/clients")

    # -- reading ------------------------------------------------------------------------

    def instances(self, query: str | None = None) -> list[Instance]:
        """The registered instances (matching `query`), sorted by name. Dispatch to call."""
        parsed = parse_query(query) if query else ()
        return [e.instance for name, e in sorted(self._instances.items())
                if matches(parsed, e.parts)]

    def _http_instances(self, request: Any) -> dict[str, Any]:
        return {
            "incarnation": self.incarnation,
            "recovering": self.recovering,
            "instances": [{"name": e.instance.name, "pid": str(e.instance.pid),
                           "user_data": e.instance.user_data, "client": str(e.client)}
                          for _, e in sorted(self._instances.items())],
            "clients": [{"pid": str(c.pid), "instances": sorted(c.names),
                         "queries": sorted(c.queries)} for c in self._clients.values()],
        }

    # -- clients ------------------------------------------------------------------------

    def _client(self, pid: UPID) -> _Client:
        client = self._clients.get(pid)
        if client is None:
            client = _Client(pid, Clock.now())
            self._clients[pid] = client
            self.link(pid)
        else:
            client.last_heard = Clock.now()
        return client

    def _heard(self, pid: UPID) -> None:
        client = self._clients.get(pid)
        if client is not None:
            client.last_heard = Clock.now()

    def _evict(self, pid: UPID, reason: str, quiet: bool = False) -> None:
        client = self._clients.pop(pid, None)
        if client is None:
            return
        metrics.inc(f"{self.id}/evictions")
        log.log(logging.INFO if quiet else logging.WARNING, "%s: dropping client %s: %s",
                self.id, pid, reason)
        for name in sorted(client.names):
            entry = self._instances.get(name)
            if entry is not None and entry.client == pid:
                self._remove(name, reason)
        self.send(pid, pb.Evicted(reason=reason))

    def exited(self, pid: UPID) -> None:
        self._evict(pid, f"lost the connection to {pid}", quiet=True)

    def _tick(self) -> None:
        self._timers = [t for t in self._timers if not t.fired_or_cancelled]
        now = Clock.now()
        self._ping_seq += 1
        ping = pb.Ping(seq=self._ping_seq, timeout=self.heartbeat_timeout,
                       incarnation=self.incarnation)
        for pid, client in list(self._clients.items()):
            silent = now - client.last_heard
            if silent > self.heartbeat_timeout:
                self._evict(pid, f"no answer from {pid} for {silent:.1f}s (heartbeat timeout "
                                 f"{self.heartbeat_timeout:g}s): its process is stopped or hung")
            else:
                self.send(pid, ping)
        self._timers.append(delay(self.heartbeat_interval, self.pid, self._tick))

    def _pong(self, sender: UPID, msg: pb.Pong) -> None:
        self._heard(sender)

    # -- registration -------------------------------------------------------------------

    def _refuse(self, sender: UPID, request_id: int, reason: str) -> None:
        metrics.inc(f"{self.id}/registrations_refused")
        log.warning("%s: refused a registration from %s: %s", self.id, sender, reason)
        self.send(sender, pb.RegisterResponse(request_id=request_id, ok=False, reason=reason,
                                              incarnation=self.incarnation))

    def _register(self, sender: UPID, msg: pb.RegisterRequest) -> None:
        name = msg.instance.name
        rid = msg.request_id
        if self.secret is not None and msg.secret != self.secret:
            self._refuse(sender, rid, f"registration of {name!r} refused by {self.pid}: "
                         f"{'wrong' if msg.secret else 'missing'} secret; give the instance "
                         "the name service's shared secret (--secret)")
            return
        try:
            parts = parse_name(name)
            pid = UPID.parse(msg.instance.pid)
        except (InvalidNameError, InvalidUPIDError) as exc:
            self._refuse(sender, rid, f"registration refused by {self.pid}: {exc}")
            return
        if pid.address != sender.address:
            self._refuse(sender, rid, f"registration of {name!r} refused: instance {pid} is "
                         f"not at the address of the names client {sender} that registers it; "
                         "register through the names client of the OS process that runs it")
            return
        existing = self._instances.get(name)
        if existing is not None and existing.instance.pid != pid:
            if not msg.replace:
                self._refuse(sender, rid, f"registration of {name!r} refused: the name is "
                             f"held by {existing.instance.pid}; stop that instance, pick "
                             "another name, or register with replace=True")
                return
            self._remove(name, f"replaced by {pid}")
            existing = None
        client = self._client(sender)
        if existing is not None and existing.client != sender:
            old = self._clients.get(existing.client)
            if old is not None:
                old.names.discard(name)
        instance = Instance(name, pid, msg.instance.user_data)
        self._instances[name] = _Entry(instance, parts, sender)
        client.names.add(name)
        metrics.inc(f"{self.id}/registrations")
        self.send(sender, pb.RegisterResponse(request_id=rid, ok=True,
                                              incarnation=self.incarnation))
        if existing is None or existing.instance != instance:
            log.info("%s: online %s at %s", self.id, name, pid)
            self._notify(ONLINE, instance, parts, "")

    def _unregister(self, sender: UPID, msg: pb.UnregisterRequest) -> None:
        self._heard(sender)
        entry = self._instances.get(msg.name)
        if entry is not None and entry.client != sender:
            self.send(sender, pb.UnregisterResponse(
                request_id=msg.request_id, ok=False,
                reason=f"{msg.name!r} was registered by {entry.client}, not by {sender}"))
            return
        if entry is not None:
            self._remove(msg.name, "unregistered")
        self.send(sender, pb.UnregisterResponse(request_id=msg.request_id, ok=True))

    def _remove(self, name: str, reason: str) -> None:
        entry = self._instances.pop(name, None)
        if entry is None:
            return
        client = self._clients.get(entry.client)
        if client is not None:
            client.names.discard(name)
        log.info("%s: offline %s at %s: %s", self.id, name, entry.instance.pid, reason)
        self._notify(OFFLINE, entry.instance, entry.parts, reason)

    # -- watches ------------------------------------------------------------------------

    def _notify(self, kind: str, instance: Instance, parts: tuple[str, ...],
                reason: str) -> None:
        notice: pb.InstanceNotice | None = None
        for pid, client in self._clients.items():
            for parsed in client.queries.values():
                if matches(parsed, parts):
                    if notice is None:
                        notice = pb.InstanceNotice(
                            kind=pb.InstanceNotice.ONLINE if kind == ONLINE
                            else pb.InstanceNotice.OFFLINE,
                            instance=to_pb(instance), reason=reason)
                    self.send(pid, notice)
                    break

    def _snapshot(self, query: str, parsed: tuple[str, ...]) -> pb.WatchSnapshot:
        return pb.WatchSnapshot(
            query=query, ok=True, recovering=self.recovering, incarnation=self.incarnation,
            instances=[to_pb(e.instance) for _, e in sorted(self._instances.items())
                       if matches(parsed, e.parts)])

    def _watch(self, sender: UPID, msg: pb.WatchRequest) -> None:
        query = msg.query
        if self.secret is not None and msg.secret != self.secret:
            self.send(sender, pb.WatchSnapshot(
                query=query, ok=False, incarnation=self.incarnation,
                reason=f"watch of {query!r} refused by {self.pid}: "
                       f"{'wrong' if msg.secret else 'missing'} secret; give the watcher the "
                       "name service's shared secret (--secret)"))
            return
        try:
            parsed = parse_query(query)
        except InvalidNameError as exc:
            self.send(sender, pb.WatchSnapshot(query=query, ok=False, reason=str(exc),
                                               incarnation=self.incarnation))
            return
        client = self._client(sender)
        client.queries[query] = parsed
        self.send(sender, self._snapshot(query, parsed))

    def _unwatch(self, sender: UPID, msg: pb.UnwatchRequest) -> None:
        client = self._clients.get(sender)
        if client is not None:
            client.last_heard = Clock.now()
            client.queries.pop(msg.query, None)

    def _end_recovery(self) -> None:
        self.recovering = False
        log.info("%s: recovery window over: %d instance(s) registered", self.id,
                 len(self._instances))
        for pid, client in self._clients.items():
            for query, parsed in client.queries.items():
                self.send(pid, self._snapshot(query, parsed))
