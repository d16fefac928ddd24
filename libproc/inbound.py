"""Incoming connections: the receiving protocol, the hand-over to aiohttp, and their bounds.

A raw asyncio Protocol (`_Inbound`) parses requests with wire.RequestParser. Messages are
delivered and answered (202/404/400/500) in request order; the first request on a connection
that is not a message (a browser, curl, an HTTP client) hands the connection to aiohttp's web
server, behind `_HttpShim`: our parser still reads every request and aiohttp gets each one
re-encoded canonically (Content-Length framing, a Host header added when missing, which
aiohttp's parser would refuse), so messages that follow on such a connection are delivered
(through http.py) under the same framing rules as anywhere else.

Bad input: bytes that are not HTTP close the connection without a response (requests before
those bytes are answered first), as libprocess does; so does a message whose framing is bad.
On the HTTP path (a request that is not a message, or any request on a handed-over
connection) a request whose framing is bad (Content-Length, chunk size, a body over the cap)
is answered 400 or 413 with a JSON error in pipeline order, then the connection is closed;
no socket outlives its peer.

Bounds (connections.py): a connection over the per-address or global bound is answered 503
and closed at once. A request that stays incomplete too long (slowloris) is closed. Otherwise
we never close an incoming connection: not one idle between requests, nor one that never sent
a byte (a C++ libprocess peer that links; closing it would make that peer report `exited`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

from libproc import wire
from libproc.clock import Clock, Timer
from libproc.connections import Admission, ConnectionLimits, overdue
from libproc.metrics import metrics

__all__ = ["Incoming"]

log = logging.getLogger("libproc.transport")

# Stop reading from a peer whose answers we cannot write (it does not read its 202s).
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# How often incomplete requests are checked against their deadline (Clock seconds), and how
# often one complaint (per address and kind) may be logged.
REAP_SECONDS = 1.0
COMPLAINT_SECONDS = 60.0


class _Incoming(asyncio.Protocol):
    """What both incoming protocols share: the address slot held (see connections.py) and the
    deadline of the request in progress, counted from its first byte on libproc's Clock."""

    __slots__ = ("_t", "_transport", "_host", "_since", "_received", "_held")

    def __init__(self, owner: Incoming) -> None:
        self._t = owner
        self._transport: asyncio.Transport | None = None
        self._host: str | None = None  # the address whose slot we hold, None when none
        self._since: float | None = None  # Clock time the incomplete request began
        self._received = 0  # bytes of it received since
        self._held = 0  # bytes our parser holds for it (counted in the admission)

    def _track(self, parser: wire.RequestParser, completed: bool, n: int) -> None:
        """After a feed: start, extend or end the deadline of the incomplete request, and
        count the bytes it holds (closing the connection when over budget)."""
        if not parser.partial:
            self._untrack()
            return
        if self._since is None or completed:  # a new request began in this data
            if self._since is None:
                self._t._watch(self)
            self._since = Clock.now()
            self._received = 0
        else:
            self._received += n
        held = parser.held
        if held != self._held and self._host is not None:
            why = self._t.admission.hold(self._host, held - self._held)
            self._held = held
            if why is not None:
                self._over_budget(why)

    def _untrack(self) -> None:
        if self._since is not None:
            self._since = None
            self._t.partial.discard(self)
        if self._held:
            if self._host is not None:
                self._t.admission.hold(self._host, -self._held)
            self._held = 0

    def _over_budget(self, why: str) -> None:
        """Its request would hold more memory than its address (or all) may: close."""
        self._untrack()
        metrics.inc("libproc/requests_over_budget")
        self._t._complain(self._host or "?", "budget",
                          "closing connections from %s whose incomplete requests hold more "
                          f"bytes than connection limit max_buffered"
                          f"{'_per_address' if why == 'per_address' else ''} allows")
        if self._transport is not None:
            self._transport.abort()

    def _release(self) -> None:
        self._untrack()
        host, self._host = self._host, None
        if host is not None:
            self._t.admission.release(host)

    def _time_out(self) -> None:
        """The request in progress is overdue: close without an answer."""
        self._untrack()
        transport = self._transport
        if transport is not None:
            metrics.inc("libproc/requests_timed_out")
            self._t._complain(self._host or "?", "timeout",
                              "closing connections from %s whose request stays incomplete "
                              "past request_timeout (slow or stuck peer)")
            transport.abort()


class _Inbound(_Incoming):
    """A connection as accepted: messages answered here, anything else handed to aiohttp."""

    __slots__ = ("_parser", "_paused")

    def __init__(self, owner: Incoming) -> None:
        super().__init__(owner)
        self._parser = wire.RequestParser(owner.limits, passthrough=self._is_not_message)
        self._paused = False

    @staticmethod
    def _is_not_message(req: wire.Request) -> bool:
        return not wire.is_message(req)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        owner = self._t
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        refusal = owner.admission.admit(host)
        if refusal is not None:
            owner._refuse_connection(transport, host, refusal)
            return
        self._host = host
        self._transport = transport
        owner.inbound.add(self)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._t.inbound.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        parser = self._parser
        try:
            requests = parser.feed(data)
        except Exception as exc:  # WireError, or anything a hostile peer provokes
            self._malformed(transport, exc)
            return
        if requests:
            deliver = self._t.deliver
            limits = self._t.limits
            out = []
            for req in requests:
                result = wire.classify(req, limits)
                if isinstance(result, wire.Message):
                    out.append(wire.RESPONSES[deliver(result)])
                else:
                    metrics.inc("libproc/messages_rejected")
                    out.append(wire.RESPONSES[result.status])
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if parser.error is not None:  # bad bytes after good requests, now answered
                self._malformed(transport, parser.error)
                return
        if parser.claimed:
            self._hand_over(transport, parser.take_rest())
        elif self._since is not None or parser.partial:
            self._track(parser, bool(requests), len(data))

    def _malformed(self, transport: asyncio.Transport, exc: Exception) -> None:
        """Bytes that are not a request: plain HTTP (never a message) is answered 400 by the
        HTTP side; anything else is closed without an answer (DESIGN.md §2.1), after the
        answers already written."""
        metrics.inc("libproc/requests_malformed")
        log.debug("closing connection from %s: %s", self._host, exc)
        self._untrack()
        if (isinstance(exc, wire.BadRequest) and exc.request is not None
                and not wire.is_message(exc.request)):
            self._hand_over(transport, b"", refusal=exc)
            return
        self._transport = None
        self._t.inbound.discard(self)
        self._t._close_after_answers(transport)

    def _hand_over(self, transport: asyncio.Transport, rest: bytes,
                   refusal: wire.BadRequest | None = None) -> None:
        """Give the connection to aiohttp (through the shim): it serves routes."""
        self._untrack()
        self._t.inbound.discard(self)
        self._transport = None
        factory = self._t.http_factory
        if factory is None:  # no HTTP server: our slot is released by connection_lost
            transport.write(wire.RESPONSES[404] if refusal is None
                            else wire.error_response(refusal.status, str(refusal)))
            self._t._close_after_answers(transport)
            return
        host, self._host = self._host, None  # the slot moves to the shim
        shim = _HttpShim(self._t, factory(), transport, host)
        transport.set_protocol(shim)
        shim.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        if refusal is not None:
            shim.refuse(refusal)
        elif rest:
            shim.data_received(rest)

    def eof_received(self) -> bool:
        return False  # close when the peer closes its side


# Answering a refused request on the HTTP path: wait until the peer has sent nothing for
# LINGER_QUIET_SECONDS (at most LINGER_MAX_SECONDS), reading and discarding, so that a client
# still uploading an oversized body reads our answer instead of a reset. Then the connection
# is gone within CLOSE_GRACE_SECONDS, whatever the peer or the HTTP server does.
LINGER_QUIET_SECONDS = 0.25
LINGER_MAX_SECONDS = 5.0
CLOSE_GRACE_SECONDS = 10.0
_HIDDEN = ("content-length", "transfer-encoding", wire.REFUSAL_HEADER)


class _HttpShim(_Incoming):
    """Between the socket and aiohttp on a handed-over connection; see the module docstring.

    A request our parser refuses is replaced, in pipeline order, by a request carrying
    wire.REFUSAL_HEADER, which http.py answers (400/413 JSON, closing the connection); from
    then on every byte the peer sends is discarded, and its EOF no longer closes our side
    before that answer is written."""

    __slots__ = ("_inner", "_parser", "_host_header", "_dead", "_refusal", "_quiet_at",
                 "_linger_until", "_timer")

    def __init__(self, owner: Incoming, inner: asyncio.Protocol,
                 transport: asyncio.Transport, host: str | None) -> None:
        super().__init__(owner)
        self._inner = inner
        self._transport = transport
        self._host = host
        self._dead = False
        self._refusal: bytes | None = None  # the stand-in request, until the peer is quiet
        self._quiet_at = 0.0
        self._linger_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._parser = wire.RequestParser(owner.limits)
        local = transport.get_extra_info("sockname")
        self._host_header = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else "localhost"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._dead:  # keep our side open until the refusal is answered (bounded)
            if self._refusal is not None:
                self._deliver_refusal()
            return True
        # The peer has sent its last request (a half-close, as `nc -N` or an HTTP/1.0
        # client does): answer everything it sent, then close; bounded by
        # CLOSE_GRACE_SECONDS.
        self._inner.eof_received()
        transport = self._transport
        if transport is None:
            return False
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CLOSE_GRACE_SECONDS, transport.abort)
        self._close_when_answered(transport)
        return True

    def _close_when_answered(self, transport: asyncio.Transport, asked: bool = False) -> None:
        """Close once aiohttp has answered every request it was given. aiohttp has no
        public way to ask, so read its handler: while requests are queued or one is being
        served, wait; then ask it to close (it does, after the request it may have just
        taken off its queue) and close ourselves once its request loop has ended (an idle
        aiohttp asked to close leaves the socket open)."""
        inner = self._inner
        queued = getattr(inner, "_messages", None)
        busy = getattr(inner, "_request_in_progress", None)
        if queued is None or busy is None:  # another aiohttp: let it close by itself
            close = getattr(inner, "close", None)
            if callable(close):
                close()
            return
        if not asked:
            if queued or busy:
                asyncio.get_running_loop().call_later(0.02, self._close_when_answered,
                                                      transport)
                return
            close = getattr(inner, "close", None)
            if callable(close):
                close()
        task = getattr(inner, "_task_handler", None)
        if task is None or task.done():
            transport.close()  # flushes what was written first
            return
        asyncio.get_running_loop().call_later(0.02, self._close_when_answered, transport, True)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            self._quiet_at = asyncio.get_running_loop().time()
            return
        parser = self._parser
        error: Exception | None
        try:
            requests = parser.feed(data)
        except Exception as exc:  # WireError, or anything a hostile peer provokes
            requests, error = [], exc
        else:
            error = parser.error
        for i, req in enumerate(requests):
            problem = _http_problem(req)
            if problem is not None:  # aiohttp's parser would answer text/plain and log
                requests = requests[:i]
                error = wire.BadRequest(400, problem, req)
                break
        if requests:
            self._inner.data_received(b"".join(self._canonical(r) for r in requests))
        if error is not None:
            metrics.inc("libproc/requests_malformed")
            self.refuse(error)
        elif self._since is not None or parser.partial:
            self._track(parser, bool(requests), len(data))

    def refuse(self, error: Exception) -> None:
        """Answer `error` after the requests before it, then close (see the class docstring)."""
        if self._dead:
            return
        self._dead = True
        self._untrack()
        status = error.status if isinstance(error, wire.BadRequest) else 0
        reason = quote(str(error)[:300], safe=" ")
        method, target = "GET", "/"
        req = error.request if isinstance(error, wire.BadRequest) else None
        if req is not None and req.target.isascii() and req.target.isprintable():
            method, target = req.method, req.target  # as it reads in aiohttp's access log
        self._refusal = (
            f"{method} {target} HTTP/1.1\r\nhost: {self._host_header}\r\nconnection: close\r\n"
            f"{wire.REFUSAL_HEADER}: {status} {reason}\r\ncontent-length: 0\r\n\r\n"
        ).encode("latin-1")
        if status == 0:  # not HTTP: nothing to answer, so nothing to linger for
            self._deliver_refusal()
            return
        loop = asyncio.get_running_loop()
        self._quiet_at = loop.time()
        self._linger_until = self._quiet_at + LINGER_MAX_SECONDS
        self._timer = loop.call_later(LINGER_QUIET_SECONDS, self._check_quiet)

    def _check_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet_from = self._quiet_at + LINGER_QUIET_SECONDS
        if now >= quiet_from or now >= self._linger_until:
            self._deliver_refusal()
        else:
            self._timer = loop.call_at(min(quiet_from, self._linger_until), self._check_quiet)

    def _deliver_refusal(self) -> None:
        refusal, self._refusal = self._refusal, None
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        if refusal is None or transport is None:
            return
        self._timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS,
                                                            transport.abort)
        self._inner.data_received(refusal)

    def _canonical(self, req: wire.Request) -> bytes:
        head = [f"{req.method} {req.target} {req.version}"]
        head += [f"{name}: {value}" for name, value in req.headers.items()
                 if name not in _HIDDEN]
        if "host" not in req.headers:
            head.append(f"host: {self._host_header}")
        head.append(f"content-length: {len(req.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body


def _http_problem(req: wire.Request) -> str | None:
    """Why a parsed request is not one an HTTP server takes (RFC 9112: no control or
    non-ASCII characters in the target, no controls but tab in header values), or None."""
    if not all(0x21 <= ord(c) < 0x7F for c in req.target):
        return "invalid character in the request target: percent-encode it"
    for name, value in req.headers.items():
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            return f"invalid (control) character in the value of header {name!r}"
    return None


class Incoming:
    """The incoming side of one runtime's transport: the protocol factory for its listening
    socket, the connections it holds, their admission and their request deadlines."""

    def __init__(
        self,
        deliver: Callable[[wire.Message], int],
        limits: wire.Limits,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        self.deliver = deliver
        self.limits = limits
        self.admission = Admission((connection_limits or ConnectionLimits()).fit_to_fd_limit())
        self.http_factory: Callable[[], asyncio.Protocol] | None = None
        self.inbound: set[_Inbound] = set()  # not yet handed over to aiohttp
        self.partial: set[_Incoming] = set()  # with a request in progress
        self._reaper: Timer | None = None
        self._complaints: dict[tuple[str, str], float] = {}

    def protocol(self) -> asyncio.Protocol:
        """The factory for `loop.create_server`."""
        return _Inbound(self)

    def _refuse_connection(self, transport: asyncio.Transport, host: str, why: str) -> None:
        """Over the bounds: a 503 with the reason, and closed at once (it costs us nothing)."""
        metrics.inc("libproc/connections_refused")
        metrics.inc(f"libproc/connections_refused_{why}")
        limits = self.admission.limits
        if why == "per_address":
            reason = (f"too many connections from {host}: at most "
                      f"{limits.max_connections_per_address} per address; close some")
            note = "max_connections_per_address"
        else:
            reason = (f"too many connections: {self.admission.total} open, at most "
                      f"{limits.max_connections}; try again later")
            note = "max_connections"
        self._complain(host, why, f"refusing connections from %s (connection limit {note}; "
                       f"logged once a minute): {reason.replace('%', '%%')}")
        try:
            transport.write(wire.error_response(503, reason))
        except OSError:
            pass
        transport.close()

    def _complain(self, host: str, kind: str, message: str) -> None:
        """Log `message % host` at most once per address, kind and COMPLAINT_SECONDS."""
        now = time.monotonic()
        key = (host, kind)
        last = self._complaints.get(key)
        if last is not None and now - last < COMPLAINT_SECONDS:
            return
        if len(self._complaints) >= 4096:
            self._complaints.clear()
        self._complaints[key] = now
        log.warning(message, host)

    def _close_after_answers(self, transport: asyncio.Transport) -> None:
        """Close once the answers already written are sent; abort if the peer never reads."""
        transport.close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, transport.abort)

    def _watch(self, conn: _Incoming) -> None:
        self.partial.add(conn)
        if self._reaper is None or self._reaper.fired_or_cancelled:
            self._reaper = Clock.timer(REAP_SECONDS, self._reap)

    def _reap(self) -> None:
        """Close the connections whose request in progress is overdue (connections.py)."""
        self._reaper = None
        now = Clock.now()
        limits = self.admission.limits
        for conn in list(self.partial):
            since = conn._since
            if since is None:
                self.partial.discard(conn)
            elif overdue(since, conn._received, now, limits):
                conn._time_out()
        if self.partial:
            self._reaper = Clock.timer(REAP_SECONDS, self._reap)

    def check_reaper(self) -> None:
        """Re-arm the deadline check if a `Clock.reset()` dropped it (called every second)."""
        if self.partial and (self._reaper is None or self._reaper.fired_or_cancelled):
            self._reaper = Clock.timer(REAP_SECONDS, self._reap)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for conn in list(self.inbound):
            if conn._transport is not None:
                conn._transport.close()
