"""NamesClient: the per-OS-process process (`names-client`) that talks to the name service.

It registers and watches on behalf of the local processes (through `Mesh`, mesh.py),
answers the name service's heartbeat pings, and keeps the OS process's cache of instances
(a `Directory`) up to date from snapshots and notices, so that a send never waits for the
name service once its query is resolved.

Contract:
- `register` -> a Future READY with the Instance once the name service confirmed it, FAILED
  with RegistrationRefusedError (the service's reason) if refused. While the name service
  cannot be reached the future stays PENDING and the client retries with exponential backoff
  (`backoff` .. `backoff_max`, with jitter); bound it with `future.after(...)` if you must.
- The client links the name service. When that link breaks (the service died or restarted)
  it keeps its cache, and reconnects with backoff: it sends every registration and every
  watch again, so a restarted name service is re-populated with no action from anyone. It
  does the same when the service says `Evicted`.
- The client links every local process that registered or watches: when one terminates, its
  names are unregistered and its watches dropped.
- Notices reach a watch in the order the name service sent them, dispatched to the watch's
  owner process (so its callback runs on that process, like any handler).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from libproc import runtime
from libproc.clock import Timer
from libproc.delay import delay
from libproc.dispatch import dispatch
from libproc.errors import InvalidUPIDError
from libproc.future import Future, Promise
from libproc.metrics import metrics
from libproc.names import names_pb2 as pb
from libproc.names.model import (
    OFFLINE,
    ONLINE,
    Directory,
    Instance,
    NamesError,
    Notice,
    RegistrationRefusedError,
    matches,
    parse_query,
)
from libproc.names.service import DEFAULT_ID, from_pb, to_pb
from libproc.pid import UPID
from libproc.protobuf import ProtobufProcess

__all__ = ["NamesClient", "Watch", "connect", "default_client", "parse_names_pid", "watch"]

log = logging.getLogger("libproc.names")

CLIENT_ID = "names-client"

NoticeCallback = Callable[[Notice], Any]


class Watch:
    """A watch of one query: its current instances, and its Online/Offline notices.

    Use a callback (`on_notice`, run on the owner process) or, without one, iterate it from
    asyncio code: `async for notice in watch`. `ready` is READY with the instances matching
    the query once the name service answered (FAILED if it refused the watch). With `replay`
    the first notices are an Online for each instance already online.
    """

    def __init__(self, client: NamesClient, query: str, owner: UPID | None,
                 on_notice: NoticeCallback | None, replay: bool = True) -> None:
        self.client = client
        self.query = query
        self.parsed = parse_query(query)
        self.owner = owner
        self.replay = replay
        self._on_notice = on_notice
        self._queue: asyncio.Queue[Notice | None] | None = (
            asyncio.Queue() if on_notice is None else None)
        self._ready: Promise[tuple[Instance, ...]] = Promise()
        self.cancelled = False

    @property
    def ready(self) -> Future[tuple[Instance, ...]]:
        return self._ready.future

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The online instances matching the query, as this OS process knows them now."""
        directory = self.client.directory
        return directory.lookup(self.query) if directory.is_resolved(self.query) else ()

    def cancel(self) -> None:
        """Stop delivering notices (the cache keeps following the query)."""
        if self.cancelled:
            return
        self.cancelled = True
        dispatch(self.client, NamesClient.unwatch, self)
        if self._queue is not None:
            self._queue.put_nowait(None)

    def _deliver(self, notice: Notice) -> None:
        if self.cancelled:
            return
        if self._on_notice is not None:
            self._on_notice(notice)
        elif self._queue is not None:
            self._queue.put_nowait(notice)

    def _end(self, error: BaseException) -> None:
        self._ready.fail(error)
        self.cancelled = True
        if self._queue is not None:
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Notice]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Notice]:
        if self._queue is None:
            raise RuntimeError(f"watch of {self.query!r} has a callback; it cannot be iterated")
        while True:
            notice = await self._queue.get()
            if notice is None:
                if self.ready.is_failed():
                    raise self.ready.exception or NamesError(self.ready.failure())
                return
            yield notice


@dataclass
class _Reg:
    instance: Instance
    replace: bool
    promise: Promise[Instance]
    rid: int = 0
    confirmed: bool = False


@dataclass
class _Query:
    parsed: tuple[str, ...]
    resolved: bool = False
    watches: list[Watch] = field(default_factory=list)
    waiters: list[Promise[tuple[Instance, ...]]] = field(default_factory=list)


class NamesClient(ProtobufProcess):
    """The names client of this OS process; see the module docstring."""

    def __init__(self, names: UPID | str, *, id: str = CLIENT_ID,  # noqa: A002
                 secret: str | None = None, backoff: float = 0.05, backoff_max: float = 2.0,
                 jitter: float = 0.2, resolve_timeout: float = 5.0) -> None:
        super().__init__(id)
        self.ns = names if isinstance(names, UPID) else parse_names_pid(names)
        self.secret = secret or None
        self.backoff_initial = backoff
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.resolve_timeout = resolve_timeout
        self.directory = Directory()
        self.incarnation = ""
        self._regs: dict[str, _Reg] = {}
        self._unregs: dict[int, Promise[bool]] = {}
        self._rids: dict[int, str] = {}  # request id of a registration's last attempt -> name
        self._queries: dict[str, _Query] = {}
        self._local: set[UPID] = set()
        self._linked = False
        self._backoff = backoff
        self._retry: Timer | None = None
        self._rid = 0

    def initialize(self) -> None:
        self.install(pb.RegisterResponse, self._registered)
        self.install(pb.UnregisterResponse, self._unregistered)
        self.install(pb.WatchSnapshot, self._snapshot)
        self.install(pb.InstanceNotice, self._notice)
        self.install(pb.Ping, self._ping)
        self.install(pb.Evicted, self._evicted)

    def finalize(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        for reg in self._regs.values():
            reg.promise.discard()
        for q in self._queries.values():
            for w in q.watches:
                w._end(NamesError(f"names client {self.pid} terminated"))

    # -- connection to the name service -------------------------------------------------

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _connect(self, relink: bool = False) -> None:
        """(Re)link the name service and send it every registration and watch."""
        self._retry = None
        self._linked = True
        self.link(self.ns, relink=relink)
        for reg in self._regs.values():
            self._send_register(reg)
        for query in self._queries:
            self.send(self.ns, pb.WatchRequest(query=query, secret=self.secret))

    def _ensure_connected(self) -> bool:
        """True if requests can be sent now; else a (re)connection will send them."""
        if self._linked:
            return True
        if self._retry is None:
            self._connect()
        return False

    def _heard(self) -> None:
        self._backoff = self.backoff_initial

    def exited(self, pid: UPID) -> None:
        if pid == self.ns:
            was = self._linked
            self._linked = False
            if not (self._regs or self._queries):
                return
            wait = self._backoff * (1 + random.uniform(-self.jitter, self.jitter))
            self._backoff = min(self._backoff * 2, self.backoff_max)
            if was:
                metrics.inc("names/client_reconnects")
                log.info("%s: lost the name service %s; reconnecting in %.2fs", self.id,
                         self.ns, wait)
            if self._retry is None:
                self._retry = delay(wait, self.pid, self._connect)
            return
        if pid in self._local:
            self._local.discard(pid)
            for name, reg in list(self._regs.items()):
                if reg.instance.pid == pid:
                    self.unregister(name)
            for q in self._queries.values():
                q.watches = [w for w in q.watches if w.owner != pid]

    def _link_local(self, pid: UPID | None) -> None:
        if pid is not None and pid not in self._local and pid != self.pid:
            self._local.add(pid)
            self.link(pid)

    def _ping(self, sender: UPID, msg: pb.Ping) -> None:
        self._heard()
        self.send(sender, pb.Pong(seq=msg.seq))

    def _evicted(self, sender: UPID, msg: pb.Evicted) -> None:
        metrics.inc("names/client_evictions")
        log.warning("%s: the name service dropped us (%s); registering again", self.id,
                    msg.reason)
        if self._regs or self._queries:
            if self._retry is not None:
                self._retry.cancel()
            self._connect(relink=True)

    # -- registration -------------------------------------------------------------------

    def register(self, instance: Instance, replace: bool = False) -> Future[Instance]:
        """Register `instance` (its pid must be a process of this OS process)."""
        old = self._regs.get(instance.name)
        if old is not None and old.instance == instance and not old.promise.future.is_failed():
            return old.promise.future
        if old is not None and old.instance.pid != instance.pid and not replace:
            return Future.failed(RegistrationRefusedError(
                f"registration of {instance.name!r} refused: {old.instance.pid} of this OS "
                "process already holds it; unregister it first or register with replace=True"))
        reg = _Reg(instance, replace, Promise())
        if old is not None:
            old.promise.associate(reg.promise.future)
        self._regs[instance.name] = reg
        self._link_local(instance.pid)
        if self._ensure_connected():
            self._send_register(reg)
        return reg.promise.future

    def _send_register(self, reg: _Reg) -> None:
        self._rids.pop(reg.rid, None)
        reg.rid = self._next_rid()
        self._rids[reg.rid] = reg.instance.name
        self.send(self.ns, pb.RegisterRequest(request_id=reg.rid, instance=to_pb(reg.instance),
                                              secret=self.secret, replace=reg.replace))

    def _registered(self, sender: UPID, msg: pb.RegisterResponse) -> None:
        self._heard()
        self.incarnation = msg.incarnation
        name = self._rids.pop(msg.request_id, None)
        reg = self._regs.get(name) if name is not None else None
        if reg is not None and reg.rid == msg.request_id:  # else an answer to an old attempt
            if msg.ok:
                if not reg.confirmed:
                    log.info("%s: registered %s", self.id, reg.instance)
                reg.confirmed = True
                reg.promise.set(reg.instance)
            else:
                del self._regs[reg.instance.name]
                error = RegistrationRefusedError(msg.reason)
                if reg.confirmed:
                    metrics.inc("names/registrations_lost")
                    log.error("%s: re-registration of %s refused: %s", self.id, name,
                              msg.reason)
                reg.promise.fail(error)

    def unregister(self, name: str) -> Future[bool]:
        """Withdraw `name`: READY True once the name service confirmed (at once when it is
        unreachable: it dropped us then anyway, and we will not register it again)."""
        reg = self._regs.pop(name, None)
        if reg is None:
            return Future.ready(False)
        self._rids.pop(reg.rid, None)
        reg.promise.discard()
        if not self._linked:
            return Future.ready(True)
        rid = self._next_rid()
        promise: Promise[bool] = Promise()
        self._unregs[rid] = promise
        self.send(self.ns, pb.UnregisterRequest(request_id=rid, name=name))
        return promise.future

    def _unregistered(self, sender: UPID, msg: pb.UnregisterResponse) -> None:
        self._heard()
        promise = self._unregs.pop(msg.request_id, None)
        if promise is None:
            return
        if msg.ok:
            promise.set(True)
        else:
            promise.fail(NamesError(msg.reason))

    def registrations(self) -> list[tuple[Instance, bool]]:
        """(instance, confirmed) for every name this OS process holds."""
        return [(r.instance, r.confirmed) for r in self._regs.values()]

    # -- watches and the cache ----------------------------------------------------------

    def _subscribe(self, query: str) -> _Query:
        q = self._queries.get(query)
        if q is None:
            q = self._queries[query] = _Query(parse_query(query))
            if self._ensure_connected():
                self.send(self.ns, pb.WatchRequest(query=query, secret=self.secret))
        return q

    def resolve(self, query: str) -> Future[tuple[Instance, ...]]:
        """The instances matching `query`, subscribing to it first if needed."""
        if self.directory.is_resolved(query):
            return Future.ready(self.directory.lookup(query))
        q = self._subscribe(query)
        promise: Promise[tuple[Instance, ...]] = Promise()
        q.waiters.append(promise)
        return promise.future

    def watch(self, watch: Watch) -> None:
        q = self._subscribe(watch.query)
        q.watches.append(watch)
        self._link_local(watch.owner)
        if q.resolved:
            self._start_watch(watch)

    def unwatch(self, watch: Watch) -> None:
        q = self._queries.get(watch.query)
        if q is not None and watch in q.watches:
            q.watches.remove(watch)

    def _start_watch(self, watch: Watch) -> None:
        current = self.directory.lookup(watch.query)
        watch._ready.set(current)
        if watch.replay:
            for inst in current:
                self._deliver(watch, Notice(ONLINE, inst, "online when the watch started"))

    @staticmethod
    def _deliver(watch: Watch, notice: Notice) -> None:
        if watch.owner is None:
            watch._deliver(notice)
        else:
            dispatch(watch.owner, watch._deliver, notice)

    def _publish(self, notices: list[Notice], skip: _Query | None = None) -> None:
        for notice in notices:
            parts = notice.instance.parts
            for q in self._queries.values():
                if q is skip or not q.resolved or not q.watches:
                    continue
                if matches(q.parsed, parts):
                    for w in q.watches:
                        self._deliver(w, notice)

    def _snapshot(self, sender: UPID, msg: pb.WatchSnapshot) -> None:
        self._heard()
        self.incarnation = msg.incarnation
        q = self._queries.get(msg.query)
        if q is None:
            return
        if not msg.ok:
            del self._queries[msg.query]
            error = NamesError(msg.reason)
            log.error("%s: watch of %r refused: %s", self.id, msg.query, msg.reason)
            for waiter in q.waiters:
                waiter.fail(error)
            for w in q.watches:
                w._end(error)
            return
        instances = []
        for item in msg.instances:
            try:
                instances.append(from_pb(item))
            except InvalidUPIDError as exc:
                log.warning("%s: ignoring instance %r: %s", self.id, item.name, exc)
        notices = self.directory.resolve(
            msg.query, instances, complete=not msg.recovering,
            reason="gone when the name service recovered")
        first = not q.resolved
        q.resolved = True
        self._publish(notices, skip=q if first else None)
        if first:
            current = self.directory.lookup(msg.query)
            waiters, q.waiters = q.waiters, []
            for waiter in waiters:
                waiter.set(current)
            for w in q.watches:
                self._start_watch(w)

    def _notice(self, sender: UPID, msg: pb.InstanceNotice) -> None:
        self._heard()
        try:
            inst = from_pb(msg.instance)
        except InvalidUPIDError as exc:
            log.warning("%s: ignoring notice for %r: %s", self.id, msg.instance.name, exc)
            return
        kind = ONLINE if msg.kind == pb.InstanceNotice.ONLINE else OFFLINE
        self._publish(self.directory.apply(Notice(kind, inst, msg.reason)))


def parse_names_pid(text: str) -> UPID:
    """`names@host:port`, or `host:port` for the default id `names`."""
    if "@" not in text:
        text = f"{DEFAULT_ID}@{text}"
    return UPID.parse(text)


_default: NamesClient | None = None


def connect(names: UPID | str, *, secret: str | None = None, **options: Any) -> NamesClient:
    """Spawn this OS process's names client (once); later calls return the same client.

    `names` is the name service's UPID (`names@host:port`, or `host:port`). Needs a running
    libproc (`await libproc.start()`); call it from the event loop's thread.
    """
    global _default
    ns = names if isinstance(names, UPID) else parse_names_pid(names)
    current = _default
    if current is not None and runtime.lookup(current) is current:
        if current.ns != ns:
            raise NamesError(f"this OS process's names client already talks to {current.ns}, "
                             f"not {ns}; one name service per OS process")
        return current
    client = NamesClient(ns, secret=secret, **options)
    runtime.spawn(client)
    _default = client
    return client


def default_client() -> NamesClient:
    """The names client spawned by `connect()`; raises NamesError if there is none."""
    current = _default
    if current is None or runtime.lookup(current) is not current:
        raise NamesError("no names client runs in this OS process: call "
                         "libproc.names.connect('names@host:port') after libproc.start()")
    return current


def watch(query: str, on_notice: Any = None, *, replay: bool = True) -> Watch:
    """A watch owned by no process, for asyncio code: iterate it (`async for notice in w`),
    or pass `on_notice`, which then runs on the names client's turn (keep it short)."""
    client = default_client()
    w = Watch(client, query, None, on_notice, replay)
    dispatch(client, NamesClient.watch, w)
    return w
