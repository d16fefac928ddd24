"""Cut the store's connections to a PostgreSQL server that stopped answering.

A server stopped with SIGSTOP (or a machine that froze) keeps its sockets: its kernel still
accepts connections and acknowledges every byte, so neither TCP keepalives nor
``tcp_user_timeout`` notice anything, and its own ``statement_timeout`` never fires. libpq
then waits for an answer for ever, and so would the store's writer thread.

So the writer ``guard()``s every database request. When one has run for ``stall`` seconds,
this module's thread asks the server whether it still answers, on a connection of its own:
a PostgreSQL ``SSLRequest`` (8 bytes), which the server answers with one byte before any
authentication, within ``probe_timeout`` seconds. If it answers, the request is just slow
and is left alone (the server's own timeouts bound it; the question is asked again every
``stall`` seconds). If not, every connection of the engine is shut down (``shutdown(2)`` on
a duplicate of its socket, so a descriptor reused meanwhile is never touched): the blocked
call fails at once as a lost connection, which the store reports as ``StoreUnavailable``;
for the rest of that request no new connection is attempted (a connect to a frozen server
would only wait out its ``connect_timeout``). A request still running after ``hard_limit``
seconds is cut whatever the answer.

Any thread may call ``alive()``; ``guard()`` is for the one writer thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

log = logging.getLogger("master.store")

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's SSLRequest packet


def server_address(url: URL) -> tuple[int, Any] | None:
    """(family, address) of a single-server PostgreSQL URL; None when it names several
    servers or none this module can reach (then only ``hard_limit`` applies)."""
    host = url.query.get("host") if url.host is None else url.host
    if isinstance(host, tuple) or (host is not None and "," in host):
        return None
    port = url.port or 5432
    if host is None or host.startswith("/"):
        return socket.AF_UNIX, f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}"
    return socket.AF_UNSPEC, (host, port)  # a name or address of any family


def answers(address: tuple[int, Any], timeout: float) -> bool:
    """Does a PostgreSQL server answer an SSLRequest at ``address`` within ``timeout`` s?"""
    family, where = address
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(where)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(where, timeout=timeout)
        with sock:
            sock.settimeout(timeout)
            sock.sendall(_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N", b"E")
    except OSError:
        return False


class Watchdog:
    """One thread per PostgreSQL store; see the module docstring."""

    def __init__(self, engine: Engine, where: str, *, stall: float = 2.0,
                 probe_timeout: float = 1.0, hard_limit: float = 120.0) -> None:
        self.where = where
        self.cuts = 0  #: how many times connections were cut (for /vars)
        #: why the last guarded request's connections were cut; None if they were not
        self.cut_reason: str | None = None
        self._address = server_address(engine.url)
        self._stall = stall
        self._probe_timeout = probe_timeout
        self._hard_limit = hard_limit
        self._cond = threading.Condition()
        self._sockets: dict[int, socket.socket] = {}  # id(dbapi connection) -> its dup
        self._armed_at: float | None = None
        self._check_at = math.inf
        self._arming = 0
        self._idle = False
        self._closed = False
        self._refusal = engine.dialect.loaded_dbapi.OperationalError
        sa.event.listen(engine, "do_connect", self._veto)
        sa.event.listen(engine, "connect", self._track)
        sa.event.listen(engine, "close", self._untrack)
        sa.event.listen(engine, "close_detached", self._untrack_detached)
        self._thread = threading.Thread(target=self._run, name="master-store-watchdog",
                                        daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Does the server answer at all now? True when its address is unknown."""
        return self._address is None or answers(self._address, self._probe_timeout)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run one database request under watch (the writer thread only; not re-entrant)."""
        now = time.monotonic()
        with self._cond:
            self._arming += 1
            self.cut_reason = None
            self._armed_at = now
            self._check_at = now + self._stall
            if self._idle:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed_at = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)
        with self._cond:
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()

    # -- connection tracking (pool events, on whichever thread connects or closes) ---------

    def _veto(self, *_args: Any) -> None:
        """No new connection within a request whose connections were just cut."""
        with self._cond:
            if self._armed_at is not None and self.cut_reason is not None:
                raise self._refusal(self.cut_reason)

    def _track(self, dbapi_conn: Any, _record: Any) -> None:
        try:
            dup = socket.socket(fileno=os.dup(dbapi_conn.fileno()))
        except (OSError, AttributeError, ValueError) as exc:
            log.debug("cannot watch a connection to %s: %s", self.where, exc)
            return
        with self._cond:
            old = self._sockets.pop(id(dbapi_conn), None)
            self._sockets[id(dbapi_conn)] = dup
        if old is not None:
            old.close()

    def _untrack(self, dbapi_conn: Any, _record: Any) -> None:
        self._untrack_detached(dbapi_conn)

    def _untrack_detached(self, dbapi_conn: Any) -> None:
        with self._cond:
            dup = self._sockets.pop(id(dbapi_conn), None)
        if dup is not None:
            dup.close()

    # -- the watching thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._armed_at is not None and now >= self._check_at:
                        break
                    self._idle = self._armed_at is None
                    wait = None if self._idle or self._check_at == math.inf else (
                        self._check_at - now)
                    self._cond.wait(wait)
                self._idle = False
                arming, armed_at = self._arming, self._armed_at
            waited = time.monotonic() - armed_at
            alive = waited < self._hard_limit and self.alive()
            with self._cond:
                if self._arming != arming or self._armed_at is None:
                    continue  # that request ended meanwhile
                if alive:
                    self._check_at = time.monotonic() + self._stall
                    continue
                self._check_at = math.inf  # once per request
                self._cut(waited)

    def _cut(self, waited: float) -> None:
        """Shut down every tracked connection (with the lock held)."""
        self.cuts += 1
        self.cut_reason = (
            f"its server stopped answering: a request got no reply for {waited:.1f} s" + (
                "" if waited >= self._hard_limit else
                f", and the server did not answer a new connection within "
                f"{self._probe_timeout:g} s"))
        log.info("database %s: %s; cutting its connections", self.where, self.cut_reason)
        for sock in self._sockets.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
