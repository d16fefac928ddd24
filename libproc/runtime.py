"""The runtime of one OS process: its address, its processes, delivery and links.

There is one runtime per OS process (as in libprocess), started with `await start()` on the
asyncio loop that will run every process. Sending to a UPID at our own address never touches
the network. Links follow libprocess: `exited(pid)` is delivered once per link when the
persistent connection to pid's address closes or cannot connect, or when a local linked
process terminates (at once if it does not exist).

`wait(pid)` is READY with True once a process that ran here has terminated (the last 10,000
terminated ids are remembered) and at once with False for a process never spawned here, as
libprocess's `wait` ("true if a process was actually waited upon").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, TypeVar

from libproc import _context, clock, wire
from libproc.connections import ConnectionLimits
from libproc.errors import NotRunningError
from libproc.future import Future, Promise
from libproc.metrics import metrics
from libproc.pid import UPID
from libproc.process import EXITED, INITIALIZE, TERMINATE, Process
from libproc.transport import Transport

__all__ = ["start", "stop", "run", "spawn", "terminate", "wait", "post", "address", "lookup",
           "all_idle", "processes", "is_running", "NO_SENDER"]

log = logging.getLogger("libproc.runtime")
T = TypeVar("T")

# The sender of a message posted from outside any process: libprocess's empty `UPID()`,
# written `@0.0.0.0:0` on the wire.
NO_SENDER = UPID("", "0.0.0.0", 0)
_TERMINATED_REMEMBERED = 10_000
_LOCAL = "libproc/messages_local"
_GONE = ("terminating", "terminated")


class Runtime:
    def __init__(self, loop: asyncio.AbstractEventLoop, limits: wire.Limits | None,
                 connection_limits: ConnectionLimits | None = None) -> None:
        self.loop = loop
        self.processes: dict[str, Process] = {}
        self.address = UPID("", "127.0.0.1", 0)
        self.bind: tuple[str, int] = ("127.0.0.1", 0)
        self.local_hosts: set[str] = set()
        self.local_ports: set[int] = set()
        self.delegate: str | None = None
        self.started_at = time.time()
        self.transport = Transport(self._deliver_remote, self._connection_lost, limits,
                                   connection_limits)
        # Links: linkee UPID -> linker processes (local linkees), and per remote address.
        self.local_links: dict[str, set[Process]] = {}
        self.remote_links: dict[tuple[str, int], set[tuple[Process, UPID]]] = {}
        self.http: Any = None
        self.executor: Any = None  # libproc.executor's default Executor, made on first use
        # Ids of processes that terminated here (bounded), so `wait` can tell "gone" from
        # "never spawned".
        self.terminated_ids: OrderedDict[str, None] = OrderedDict()
        # Set by stop(): from then on a request finding no process is told 503 (this whole
        # runtime is going away; ask again, maybe elsewhere), not 404 (no such thing here).
        self.stopping = False

    # -- locality -----------------------------------------------------------------------

    def is_local(self, pid: UPID) -> bool:
        return pid.port in self.local_ports and pid.host in self.local_hosts

    # -- delivery -----------------------------------------------------------------------

    def send(self, sender: UPID, to: UPID, name: str, body: bytes) -> None:
        if to.port in self.local_ports and to.host in self.local_hosts:  # is_local(to)
            counters = metrics.counters  # metrics.inc, inlined: this is the local hot path
            counters[_LOCAL] = counters.get(_LOCAL, 0) + 1
            proc = self.processes.get(to.id)
            if proc is None or proc._state in _GONE:
                metrics.inc("libproc/messages_dropped_no_process")
                log.debug("dropping %r from %s: no process %r here", name, sender, to.id)
                return
            proc._enqueue_message(sender, name, body)
            return
        self.transport.send(to.address, str(sender), to.id, name, body)

    def _deliver_remote(self, message: wire.Message) -> int:
        """Deliver a message read off a socket; the return value is the HTTP status."""
        metrics.inc("libproc/messages_received")
        proc = self.processes.get(message.to_id)
        if proc is None or proc._state in ("terminating", "terminated"):
            metrics.inc("libproc/messages_unknown_process")
            return 404
        proc._enqueue_message(message.sender, message.name, message.body)
        return 202

    # -- links --------------------------------------------------------------------------

    def link(self, linker: Process, to: UPID, relink: bool) -> None:
        if self.is_local(to):
            target = self.processes.get(to.id)
            if target is None or target._state in ("terminating", "terminated"):
                linker._enqueue((EXITED, to))
                return
            self.local_links.setdefault(to.id, set()).add(linker)
            return
        links = self.remote_links.setdefault(to.address, set())
        links.add((linker, to))
        if relink:
            self.transport.relink(to.address)
        else:
            self.transport.connection(to.address, persistent=True)

    def _connection_lost(self, address: tuple[str, int], persistent: bool) -> None:
        links = self.remote_links.pop(address, None)
        if not links:
            return
        for linker, to in links:
            if linker._state not in ("terminating", "terminated"):
                linker._enqueue((EXITED, to))

    # -- lifecycle ----------------------------------------------------------------------

    def spawn(self, process: Process) -> UPID:
        if process._runtime is not None or process._state != "created":
            raise ValueError(f"process {process.id!r} was already spawned")
        if process.id in self.processes:
            raise ValueError(
                f"a process with id {process.id!r} already runs here; pick another id"
            )
        process._pid = self.address.with_id(process.id)
        process._loop = self.loop
        process._runtime = self
        self.processes[process.id] = process
        process._enqueue((INITIALIZE,))
        return process._pid

    def terminate(self, pid: UPID | Process | str, inject: bool = True) -> bool:
        proc = self.lookup(pid)
        if proc is None or proc._state in ("terminating", "terminated"):
            return False
        proc._state = "terminating"
        proc._enqueue((TERMINATE,), front=inject)
        return True

    def _terminated(self, proc: Process) -> None:
        if self.processes.get(proc.id) is proc:
            del self.processes[proc.id]
        self.terminated_ids[proc.id] = None
        self.terminated_ids.move_to_end(proc.id)
        if len(self.terminated_ids) > _TERMINATED_REMEMBERED:
            self.terminated_ids.popitem(last=False)
        for linker in self.local_links.pop(proc.id, ()):
            if linker._state not in ("terminating", "terminated"):
                linker._enqueue((EXITED, proc.pid))
        # Forget the links this process held.
        for linkers in self.local_links.values():
            linkers.discard(proc)
        for address, links in list(self.remote_links.items()):
            links -= {item for item in links if item[0] is proc}
            if not links:
                del self.remote_links[address]
                self.transport.unpersist(address)

    def lookup(self, pid: UPID | Process | str) -> Process | None:
        """The live local process that `pid` names (a UPID at our address, or one without
        an address; a bare id; a Process spawned here), or None."""
        if type(pid) is UPID or isinstance(pid, UPID):
            if pid.host and pid.port and not (pid.port in self.local_ports
                                              and pid.host in self.local_hosts):
                return None
            return self.processes.get(pid.id)
        if isinstance(pid, Process):
            return pid if self.processes.get(pid.id) is pid else None
        return self.processes.get(pid)

    def all_idle(self) -> bool:
        return all(p._idle() for p in self.processes.values())


_runtime: Runtime | None = None


def _get(action: str) -> Runtime:
    if _runtime is None:
        raise NotRunningError(action)
    return _runtime


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{name}={value!r} is not a port number (0-65535)")
    return int(value)


def _default_advertise_ip(bind_host: str) -> str:
    """libprocess's rule: bound to 0.0.0.0 -> the first IP the hostname resolves to."""
    if bind_host not in ("0.0.0.0", ""):
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


async def start(
    host: str | None = None,
    port: int | None = None,
    *,
    advertise_host: str | None = None,
    advertise_port: int | None = None,
    delegate: str | None = None,
    limits: wire.Limits | None = None,
    connection_limits: ConnectionLimits | None = None,
) -> UPID:
    """Bind the listening socket and start the runtime on the running loop.

    Unset arguments come from LIBPROCESS_IP / LIBPROCESS_PORT / LIBPROCESS_ADVERTISE_IP /
    LIBPROCESS_ADVERTISE_PORT, then the defaults: bind 0.0.0.0, a random free port. Returns
    the advertised address as a UPID with an empty id. `limits` bound one request's size,
    `connection_limits` the incoming connections per address and in total, and how long a
    request may take to arrive (libproc.connections; unset: the defaults, overridden by
    LIBPROCESS_MAX_CONNECTIONS / _MAX_CONNECTIONS_PER_ADDRESS / _REQUEST_TIMEOUT).
    """
    global _runtime
    if _runtime is not None:
        raise RuntimeError("libproc is already running in this OS process; call stop() first")
    from libproc import http

    host = host or os.environ.get("LIBPROCESS_IP") or "0.0.0.0"
    if port is None:
        port = _env_port("LIBPROCESS_PORT") or 0
    advertise_host = advertise_host or os.environ.get("LIBPROCESS_ADVERTISE_IP") or None
    if advertise_port is None:
        advertise_port = _env_port("LIBPROCESS_ADVERTISE_PORT")

    if connection_limits is None:
        connection_limits = ConnectionLimits.from_env(os.environ)
    rt = Runtime(asyncio.get_running_loop(), limits, connection_limits)
    rt.delegate = delegate
    bound_host, bound_port = await rt.transport.listen(host, port)
    adv_host = advertise_host or _default_advertise_ip(bound_host)
    adv_port = advertise_port or bound_port
    rt.address = UPID("", adv_host, adv_port)
    rt.bind = (bound_host, bound_port)
    rt.local_ports = {bound_port, adv_port}
    rt.local_hosts = {adv_host, bound_host, "127.0.0.1", "localhost", "0.0.0.0"}
    if bound_host == "0.0.0.0":
        rt.local_hosts.add(_default_advertise_ip("0.0.0.0"))
    rt.http = http.HttpServer(rt)
    rt.transport.http_factory = rt.http.protocol_factory()
    _runtime = rt
    _context.runtime, _context.loop = rt, rt.loop
    clock.set_idle_check(rt.all_idle)
    log.debug("libproc listening on %s:%s, advertising %s", bound_host, bound_port, rt.address)
    return rt.address


async def stop(timeout: float = 5.0) -> None:
    """Terminate every process, wait for them (bounded), close every socket."""
    global _runtime
    rt = _runtime
    if rt is None:
        return
    rt.stopping = True
    for proc in list(rt.processes.values()):
        rt.terminate(proc)
    waiters = [p._done.future for p in list(rt.processes.values())]
    if waiters:
        done = asyncio.gather(*[_as_aio(w) for w in waiters], return_exceptions=True)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            log.warning("stop(): some processes did not finish within %.1fs", timeout)
    if rt.http is not None:
        await rt.http.close()
    await rt.transport.close()
    _runtime = None
    _context.runtime = _context.loop = None
    clock.set_idle_check(None)


async def _as_aio(f: Future[Any]) -> Any:
    return await f


def run(main: Awaitable[T], **start_kwargs: Any) -> T:
    """`asyncio.run(main)` with libproc started before and stopped after."""

    async def wrapper() -> T:
        await start(**start_kwargs)
        try:
            return await main
        finally:
            await stop()

    return asyncio.run(wrapper())


def is_running() -> bool:
    return _runtime is not None


def address() -> UPID:
    """The advertised address of this OS process (a UPID with an empty id)."""
    return _get("read the address").address


def spawn(process: Process) -> UPID:
    """Start `process`: it runs `initialize()` first, then handles its mailbox."""
    return _get(f"spawn {process.id!r}").spawn(process)


def terminate(pid: UPID | Process | str, inject: bool = True) -> bool:
    """Ask a local process to finish: `inject=True` (libprocess's default) puts the
    termination ahead of queued events, which are then dropped; False lets them run first."""
    return _get("terminate").terminate(pid, inject)


def wait(pid: UPID | Process | str, timeout: float | None = None) -> Future[bool]:
    """A Future READY with True once the process has terminated (at once if it already
    has), False at once for a process never spawned here; with `timeout`, READY with False
    if it is still running then."""
    rt = _get("wait")
    proc = rt.lookup(pid)
    if proc is None:
        if isinstance(pid, Process):
            return Future.ready(pid._state == "terminated")
        pid_id = pid.id if isinstance(pid, UPID) else pid
        local = not isinstance(pid, UPID) or not pid.host or rt.is_local(pid)
        return Future.ready(local and pid_id in rt.terminated_ids)
    fut = proc._done.future
    if timeout is None:
        return fut
    promise: Promise[bool] = Promise()
    promise.associate(fut.after(timeout, lambda _: False))
    return promise.future


def post(to: UPID, name: str | UPID, body: bytes | str = b"", *args: Any,
         sender: UPID | None = None) -> None:
    """Send a message from outside any process (libprocess's `post`).

    `post(to, name, body=b"")`, or libprocess's `post(sender, to, name, body=b"")`. The
    receiver sees `sender`, by default NO_SENDER (`@0.0.0.0:0`: nobody to answer). Delivery
    is as for `Process.send`: local without the network, remote at most once; an empty `to`
    is ignored. Call it from the event loop's thread.
    """
    if isinstance(name, UPID):  # post(sender, to, name, body)
        if not isinstance(body, str) or len(args) > 1:
            raise TypeError("post(sender, to, name, body=b'') takes a message name third")
        sender, to, name, body = to, name, body, (args[0] if args else b"")
    elif args:
        raise TypeError("post(to, name, body=b'') takes at most three arguments")
    if not isinstance(body, bytes):
        raise TypeError(f"a message body is bytes, not {type(body).__name__}")
    rt = _get(f"post {name!r}")
    if not to:
        return
    rt.send(sender if sender is not None else NO_SENDER, to, name, body)


def lookup(pid: UPID | Process | str) -> Process | None:
    rt = _runtime
    return rt.lookup(pid) if rt is not None else None


def processes() -> list[Process]:
    rt = _runtime
    return list(rt.processes.values()) if rt is not None else []


def all_idle() -> bool:
    rt = _runtime
    return rt.all_idle() if rt is not None else True


def current() -> Runtime | None:
    return _runtime
