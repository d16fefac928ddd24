"""Sockets: the listener for incoming messages and the pool of outgoing connections.

Incoming (inbound.py): messages are delivered and answered in request order, other HTTP
requests are handed to aiohttp; connections are bounded per address and in total, a request
incomplete for too long is closed, an idle connection never is (DESIGN.md §2.1).

Outgoing: one connection per remote `host:port`, shared by every local process. Sends are
queued and flushed once per event-loop turn (pipelined; we never wait for the 202s, whose bytes
we read and discard). A connection that a link holds is persistent; others are closed after
an idle period by shutting down our write side and draining the peer's responses first, so the
peer's kernel never resets a connection with data in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from libproc import wire
from libproc.connections import ConnectionLimits
from libproc.inbound import Incoming
from libproc.metrics import metrics

__all__ = ["Transport"]

log = logging.getLogger("libproc.transport")

IDLE_CLOSE_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 5.0
# Most bytes held for one outgoing connection (queued while connecting + unsent writes)
# once its peer has STALLED: taken nothing for STALL_SECONDS. A healthy peer is never cut
# off, however big a burst (libprocess buffers without bound too); a peer that stops reading,
# or a connect that hangs, costs at most this much memory, then its messages are dropped.
MAX_BUFFERED = 64 * 1024 * 1024
STALL_SECONDS = 5.0


class _Outbound(asyncio.Protocol):
    """One connection to a remote address; see the module docstring."""

    def __init__(self, owner: Transport, address: tuple[str, int]) -> None:
        self._t = owner
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.host_header = f"{address[0]}:{address[1]}"
        self._queue: list[tuple[str, str, str, bytes]] = []
        self._queued_bytes = 0  # approximate encoded size of `_queue`
        self._warned = 0.0
        self._flush_scheduled = False
        self.state = "connecting"  # connecting | open | draining | closed
        self.persistent = False
        self.abandoned = False  # replaced by a relink: its loss fires no `exited`
        self.last_used = time.monotonic()
        self._drain_timer: asyncio.TimerHandle | None = None
        # When the peer last took bytes (or nothing was waiting for it), and how many bytes
        # the transport held right after our last write: less now means it has read some.
        self._progress_at = self.last_used
        self._held_after_write = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.address
        try:
            ip = await self._t.resolve(host)
            self.host_header = f"{ip}:{port}"
            await loop.create_connection(lambda: self, ip, port)
        except (TimeoutError, OSError, UnicodeError, ValueError) as exc:
            log.debug("connect to %s:%s failed: %s", host, port, exc)
            metrics.inc("libproc/connect_failures")
            self._closed(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.state == "closed":  # the owner gave up on us while connecting
            transport.close()
            return
        self.state = "open"
        if self._queue:
            self._flush()

    def data_received(self, data: bytes) -> None:
        pass  # responses to our messages: read and discarded, as libprocess does

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(exc)

    def send(self, sender: str, to_id: str, name: str, body: bytes) -> None:
        # Bound what one peer can make us hold: past MAX_BUFFERED bytes, messages to a peer
        # that has stalled (see STALL_SECONDS) are dropped (delivery is at most once) and
        # counted.
        held = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if held + self._queued_bytes + len(body) > MAX_BUFFERED and self._stalled(held):
            metrics.inc("libproc/messages_dropped_backpressure")
            now = time.monotonic()
            if now - self._warned > 10.0:
                self._warned = now
                log.warning("dropping messages to %s:%s: %d bytes buffered for it and it has "
                            "taken none for %.0f s", self.address[0], self.address[1],
                            held + self._queued_bytes, now - self._progress_at)
            return
        self._queued_bytes += len(body) + 200
        self._queue.append((sender, to_id, name, body))
        self.last_used = time.monotonic()
        if self.state == "open" and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        self._queued_bytes = 0
        if not queue or self.transport is None:
            return
        host = self.host_header
        encode = wire.encode_message
        data = b"".join([encode(s, t, n, host, b) for (s, t, n, b) in queue])
        metrics.inc("libproc/messages_sent", len(queue))
        transport = self.transport
        if transport.get_write_buffer_size() == 0:
            self._progress_at = time.monotonic()  # nothing was waiting: not stalled
        transport.write(data)
        self._held_after_write = transport.get_write_buffer_size()

    def _stalled(self, held: int) -> bool:
        """True once the peer has taken nothing for STALL_SECONDS (or never connected)."""
        now = time.monotonic()
        if self.transport is not None and (held == 0 or held < self._held_after_write):
            # Nothing waits in the socket (what is queued is this turn's), or the peer
            # has read some since our last write.
            self._held_after_write = held
            self._progress_at = now
        return now - self._progress_at > STALL_SECONDS

    def close_gracefully(self) -> None:
        """Shut our write side after the queue drains; the peer then closes its side."""
        if self.state in ("draining", "closed"):
            return
        if self.transport is None:  # still connecting: what is queued is dropped (counted)
            self._closed(None)
            return
        self._flush()
        self.state = "draining"
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        except OSError:
            self.transport.abort()
        loop = asyncio.get_running_loop()
        self._drain_timer = loop.call_later(DRAIN_TIMEOUT_SECONDS, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _closed(self, exc: BaseException | None) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        dropped = len(self._queue)
        self._queue = []
        if dropped:
            metrics.inc("libproc/messages_dropped_unconnected", dropped)
        self.transport = None
        self._t._outbound_closed(self)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


class Transport:
    """The listening socket and the outgoing pool of one libproc runtime."""

    def __init__(
        self,
        deliver: Callable[[wire.Message], int],
        on_lost: Callable[[tuple[str, int], bool], None],
        limits: wire.Limits | None = None,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        self._on_lost = on_lost
        self.limits = limits or wire.Limits()
        self.incoming = Incoming(deliver, self.limits, connection_limits)
        self.outbound: dict[tuple[str, int], _Outbound] = {}
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._resolved: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def http_factory(self) -> Callable[[], asyncio.Protocol] | None:
        """Makes aiohttp's protocol for a connection handed over (set by the runtime)."""
        return self.incoming.http_factory

    @http_factory.setter
    def http_factory(self, factory: Callable[[], asyncio.Protocol] | None) -> None:
        self.incoming.http_factory = factory

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.incoming.protocol, host, port, reuse_address=True, backlog=1024,
            family=socket.AF_INET,
        )
        sock = self._server.sockets[0]
        bound: tuple[str, int] = sock.getsockname()[:2]
        self._sweeper = loop.call_later(1.0, self._sweep)
        return bound

    async def resolve(self, host: str) -> str:
        if _is_ip(host):
            return host
        cached = self._resolved.get(host)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        ip = str(infos[0][4][0])
        self._resolved[host] = ip
        return ip

    def connection(self, address: tuple[str, int], persistent: bool = False) -> _Outbound:
        conn = self.outbound.get(address)
        if conn is None or conn.state in ("draining", "closed"):
            conn = _Outbound(self, address)
            self.outbound[address] = conn
            task = asyncio.get_running_loop().create_task(conn.connect())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        if persistent:
            conn.persistent = True
        return conn

    def send(self, address: tuple[str, int], sender: str, to_id: str, name: str,
             body: bytes) -> None:
        self.connection(address).send(sender, to_id, name, body)

    def relink(self, address: tuple[str, int]) -> _Outbound:
        """Replace the connection to `address` with a new persistent one (no `exited`)."""
        old = self.outbound.pop(address, None)
        carried: list[tuple[str, str, str, bytes]] = []
        carried_bytes = 0
        if old is not None:
            old.abandoned = True
            if old.transport is None:  # still connecting: its queue moves to the new socket
                carried, old._queue = old._queue, []
                carried_bytes, old._queued_bytes = old._queued_bytes, 0
            old.close_gracefully()
        conn = self.connection(address, persistent=True)
        if carried:
            conn._queue[:0] = carried
            conn._queued_bytes += carried_bytes
        return conn

    def _outbound_closed(self, conn: _Outbound) -> None:
        if self.outbound.get(conn.address) is conn:
            del self.outbound[conn.address]
        if not conn.abandoned:
            self._on_lost(conn.address, conn.persistent)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.outbound.values()):
            if (not conn.persistent and conn.state == "open" and not conn._queue
                    and now - conn.last_used > IDLE_CLOSE_SECONDS):
                conn.close_gracefully()
        self.incoming.check_reaper()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(1.0, self._sweep)

    def unpersist(self, address: tuple[str, int]) -> None:
        conn = self.outbound.get(address)
        if conn is not None:
            conn.persistent = False

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.outbound.values()):
            conn.abandoned = True
            conn.close_gracefully()
        self.incoming.close()
        for task in list(self._pending):
            task.cancel()
        # Give draining connections a moment to see the peer's close.
        deadline = time.monotonic() + 1.0
        while any(c.state != "closed" for c in self.outbound.values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.outbound.values()):
            conn._abort()
        self.outbound.clear()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass

    def stats(self) -> dict[str, Any]:
        """Gauges for /metrics/snapshot: `inbound` counts every incoming connection held
        (messages and HTTP alike), `inbound_addresses` the addresses holding them."""
        admission = self.incoming.admission
        return {"inbound": admission.total, "outbound": len(self.outbound),
                "inbound_addresses": admission.addresses(),
                "inbound_busiest_address": admission.busiest(),
                "inbound_buffered_bytes": admission.buffered,
                "incomplete_requests": len(self.incoming.partial)}
