"""Talking to ZooKeeper from asyncio code: `zk://` URLs, and a worker thread per client.

The master's contender (master/election.py) and the detector of slaves and clients
(protos/detector.py) both keep one ZooKeeper session with `kazoo` and follow it. kazoo calls
back on its own threads, and its calls block, while our processes live on an asyncio loop.
So each of them is a `ZooKeeperWorker`: one thread of ours owns the kazoo client and does
every blocking call; kazoo's callbacks (session state, watches) only wake it; what it finds
is handed to the loop through a `LoopChannel` (`loop.call_soon_threadsafe`), in order.

Contract:
- `parse_zk_url` accepts exactly `zk://HOST[:PORT][,HOST[:PORT]...]/PATH` (port 2181 when
  left out, IPv6 hosts in brackets) and raises `ZkUrlError` saying what is wrong and what a
  good URL looks like.
- A worker never gives up on ZooKeeper: it reconnects for ever (backoff at most 1 s) and,
  after a session expired, kazoo opens a new session by itself; the subclass's `_step` runs
  on the worker thread after every state change or watch and every `_interval()` seconds.
- `close()` ends the session (its ephemeral znodes go at once) and joins the threads,
  bounded; it is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionLoss, SessionExpiredError
from kazoo.retry import KazooRetry

__all__ = [
    "DEFAULT_PORT", "DEFAULT_SESSION_TIMEOUT", "LoopChannel", "ZkUrl", "ZkUrlError",
    "ZooKeeperWorker", "is_zk_url", "parse_zk_url",
]

log = logging.getLogger("zookeeper")
# kazoo warns several times per reconnect attempt; our workers log each state change once.
kazoo_log = logging.getLogger("zookeeper.kazoo")
if kazoo_log.level == logging.NOTSET:
    kazoo_log.setLevel(logging.ERROR)

DEFAULT_PORT = 2181
# ZooKeeper expires a session this long after it last heard from the client: the time a
# killed leader keeps its place, so failover takes at least this long. Mesos uses 10 s; the
# HA target (a new leader within 10 s of kill -9, recovery included) needs less.
DEFAULT_SESSION_TIMEOUT = 5.0
MAX_URL = 4096
T = TypeVar("T")

_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_SEGMENT = re.compile(r"[A-Za-z0-9_.:@+=-]{1,255}")
_EXAMPLE = "expected zk://HOST:PORT[,HOST:PORT...]/PATH, e.g. zk://127.0.0.1:2181/cluster"


class ZkUrlError(ValueError):
    """A `zk://` URL that cannot be used; the message says why and shows a good one."""

    def __init__(self, url: str, reason: str) -> None:
        shown = url if len(url) <= 200 else url[:200] + "..."
        super().__init__(f"bad ZooKeeper URL {shown!r}: {reason} ({_EXAMPLE})")


@dataclass(frozen=True, slots=True)
class ZkUrl:
    """Where a cluster's masters meet: ZooKeeper servers and the znode path under them."""

    servers: tuple[tuple[str, int], ...]
    path: str

    @property
    def hosts(self) -> str:
        """The servers as kazoo's connect string, `h1:p1,h2:p2`."""
        return ",".join(f"{host}:{port}" for host, port in self.servers)

    def __str__(self) -> str:
        return f"zk://{self.hosts}{self.path}"


def is_zk_url(text: str) -> bool:
    """Does `text` (a --master or --zk value) name ZooKeeper rather than one master?"""
    return text.strip().lower().startswith("zk://")


def parse_zk_url(url: str) -> ZkUrl:
    """Parse `zk://HOST[:PORT][,HOST[:PORT]...]/PATH`; raises ZkUrlError with the reason."""
    if not isinstance(url, str):
        raise ZkUrlError(repr(url), "not a string")
    text = url.strip()
    if len(text) > MAX_URL:
        raise ZkUrlError(text, f"longer than {MAX_URL} characters")
    if not text.lower().startswith("zk://"):
        raise ZkUrlError(text, "it does not start with zk://")
    rest = text[5:]
    if any(c in rest for c in "?#") or any(ord(c) < 33 or ord(c) == 127 for c in rest):
        raise ZkUrlError(text, "it contains a query, a fragment, a space or a control character")
    slash = rest.find("/")
    if slash < 0:
        raise ZkUrlError(text, "no /PATH after the servers")
    authority, path = rest[:slash], rest[slash:]
    if "@" in authority:
        raise ZkUrlError(text, "credentials (user:password@) are not supported")
    if not authority:
        raise ZkUrlError(text, "no server before the path")
    servers = tuple(_parse_server(text, part) for part in authority.split(","))
    return ZkUrl(servers, _parse_path(text, path))


def _parse_server(url: str, part: str) -> tuple[str, int]:
    if not part:
        raise ZkUrlError(url, "an empty server in the list (two commas, or a trailing one)")
    host, port_text = part, ""
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise ZkUrlError(url, f"server {part!r}: no ']' closing the IPv6 address")
        host, tail = part[: end + 1], part[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ZkUrlError(url, f"server {part!r}: expected ':PORT' after ']'")
        port_text = tail[1:]
        if tail and not port_text:
            raise ZkUrlError(url, f"server {part!r}: empty port")
    elif ":" in part:
        host, port_text = part.rsplit(":", 1)
        if not port_text:
            raise ZkUrlError(url, f"server {part!r}: empty port")
    if not _HOST.fullmatch(host):
        raise ZkUrlError(url, f"server {part!r}: {host!r} is not a host name or IP address")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ZkUrlError(url, f"server {part!r}: port {port_text!r} is not 1-65535")
    return host, int(port_text)


def _parse_path(url: str, path: str) -> str:
    if path == "/":
        raise ZkUrlError(url, "the path is the root '/': give the cluster a znode, e.g. /cluster")
    if path == "/zookeeper" or path.startswith("/zookeeper/"):
        raise ZkUrlError(url, f"path {path!r} is ZooKeeper's own (/zookeeper is reserved)")
    if path.endswith("/"):
        raise ZkUrlError(url, f"path {path!r} ends with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise ZkUrlError(url, f"path {path!r} has an empty segment ('//')")
        if segment in (".", ".."):
            raise ZkUrlError(url, f"path {path!r}: segment {segment!r} is not allowed")
        if not _SEGMENT.fullmatch(segment):
            raise ZkUrlError(url, f"path {path!r}: segment {segment!r} may only hold letters, "
                                  f"digits and _.:@+=-")
    return path


class LoopChannel(Generic[T]):
    """Values published from any thread, delivered in order on one asyncio loop.

    Subscribers are callbacks (`add_callback`, called on the loop) and async iterators
    (`subscribe()`, each starting with the latest value). `close()` ends the iterators after
    what was published before it; later values are dropped, and so is everything once the
    loop is closed (the owner is shutting down).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, initial: T) -> None:
        self._loop = loop
        self._latest = initial
        self._callbacks: list[Callable[[T], object]] = []
        self._queues: set[asyncio.Queue[tuple[bool, T]]] = set()
        self._closed = False

    @property
    def latest(self) -> T:
        """The last value delivered on the loop (read it on the loop's thread)."""
        return self._latest

    def publish(self, value: T) -> None:
        """From any thread: deliver `value` on the loop, after those published before it."""
        try:
            self._loop.call_soon_threadsafe(self._deliver, value)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _deliver(self, value: T) -> None:
        if self._closed:
            return
        self._latest = value
        for q in self._queues:
            q.put_nowait((False, value))
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                log.exception("a subscriber's callback failed")

    def add_callback(self, callback: Callable[[T], object]) -> None:
        """Call `callback(value)` on the loop for every value delivered from now on."""
        self._callbacks.append(callback)

    async def subscribe(self) -> AsyncIterator[T]:
        """The latest value, then every later one, until `close()`."""
        q: asyncio.Queue[tuple[bool, T]] = asyncio.Queue()
        self._queues.add(q)
        try:
            if self._closed:
                return
            yield self._latest
            while True:
                done, value = await q.get()
                if done:
                    return
                yield value
        finally:
            self._queues.discard(q)

    def close(self) -> None:
        """On the loop: end every iterator once what was published so far is delivered;
        later publications are dropped."""
        self._loop.call_soon(self._close_now)

    def _close_now(self) -> None:
        self._closed = True
        for q in self._queues:
            q.put_nowait((True, self._latest))


class ZooKeeperWorker:
    """One kazoo session followed by one thread of ours; subclasses implement `_step`.

    `_step()` runs on the worker thread only (never concurrently), after each session state
    change or watch and at least every `_interval()` seconds; an exception in it is logged
    and the step retried a moment later. Use `self._wake` as the watch function of kazoo
    calls, and `self._call(async_result)` to wait for one with a bound.
    """

    _idle_interval = 1.0

    def __init__(self, url: ZkUrl | str, *, session_timeout: float = DEFAULT_SESSION_TIMEOUT,
                 name: str = "zookeeper") -> None:
        self.url = url if isinstance(url, ZkUrl) else parse_zk_url(url)
        if not 0.1 <= session_timeout <= 600:
            raise ValueError(f"session_timeout {session_timeout!r} s is not within 0.1-600 s")
        self.session_timeout = session_timeout
        self.name = name
        self._client = KazooClient(
            hosts=self.url.hosts, timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=1.0),
            logger=kazoo_log)
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = threading.Event()
        self._states: list[str] = []
        self._lock = threading.Lock()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Connect in the background and start the worker thread (never blocks)."""
        if self._started:
            raise RuntimeError(f"{self.name} was already started")
        self._started = True
        self._client.add_listener(self._on_state)
        self._client.start_async()
        self._thread.start()

    def _close_worker(self, timeout: float = 10.0) -> None:
        """Blocking: stop the worker, then end the session (ephemeral znodes go now)."""
        self._stopping.set()
        self._events.put("stop")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        try:
            self._client.stop()
            self._client.close()
        except Exception:  # noqa: BLE001 - closing an unreachable session: nothing to undo
            log.debug("%s: closing the ZooKeeper client failed", self.name, exc_info=True)

    # -- kazoo's threads: only wake the worker ----------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            log.info("%s: connected to ZooKeeper %s", self.name, self.url.hosts)
        elif state == KazooState.SUSPENDED:
            log.warning("%s: connection to ZooKeeper lost; reconnecting", self.name)
        elif not self._stopping.is_set():
            log.warning("%s: ZooKeeper session expired; opening a new one", self.name)
        with self._lock:
            self._states.append(state)
        self._events.put("state")

    def _wake(self, *_event: Any) -> None:
        self._events.put("watch")

    # -- the worker thread ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The session is up and the server answers (kazoo's CONNECTED)."""
        return bool(self._client.state == KazooState.CONNECTED)

    @property
    def session_id(self) -> int | None:
        """The current session's id while connected, else None."""
        client_id = self._client.client_id
        return None if client_id is None else int(client_id[0])

    def _take_states(self) -> list[str]:
        """Session states seen by kazoo since the last call, oldest first."""
        with self._lock:
            states, self._states = self._states, []
        return states

    def _call(self, result: Any) -> Any:
        """Wait for a kazoo async result, at most `_call_timeout()`; raises its error (a
        request made while reconnecting would otherwise wait for as long as that takes)."""
        return result.get(timeout=self._call_timeout())

    def _call_timeout(self) -> float:
        """How long one ZooKeeper request may take; subclasses may shorten it."""
        return self.session_timeout

    def _interval(self) -> float:
        """Seconds until the next `_step` when nothing happens; subclasses may shorten it."""
        return self._idle_interval

    def _step(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._events.get(timeout=max(0.01, self._interval()))
            except queue.Empty:
                pass
            while True:  # one step for a burst of events
                try:
                    self._events.get_nowait()
                except queue.Empty:
                    break
            if self._stopping.is_set():
                return
            try:
                self._step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - ZooKeeper errors: retry a moment later
                failures += 1
                # A call cut by a lost connection: _on_state has said so already.
                quiet = failures > 1 or isinstance(exc, (ConnectionLoss, SessionExpiredError))
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "%s: %s (%s); retrying", self.name, type(exc).__name__, exc)
                time.sleep(min(1.0, 0.05 * failures))
                self._events.put("retry")
