"""Follow the master's event stream (`GET /master/events`) from the synchronous CLI.

Why a thread: the CLI is synchronous (urllib), and a blocking read of a stream cannot also
wait for `--timeout` or Ctrl-C. So one daemon thread reads the stream and reconnects; the
command's own thread takes what arrived from a queue, with a timeout (a blocked
`queue.get` is interrupted by Ctrl-C as usual).

Contract:
- `EventFeed.open(client)` subscribes synchronously. It returns a running feed once the
  master answered `200 text/event-stream` (from then on no event is missed, so fetch the
  state *after* it), or a `Refusal` when the master has no event stream (404 or 405: a
  master older than issue 14), refuses one (503: too many subscribers), answers anything
  else, or cannot be reached. The caller then polls; `Refusal.transient` says whether
  asking again later may help.
- `next(timeout)` returns what arrived within `timeout` seconds (it waits for the first
  item only): `Event(payload)` for each JSON object, `Reset` when the state must be fetched
  again (the master said so, or sent something that is not a JSON object with a type: a
  missed change is worse than one more fetch), and `Gone` once, last, when the stream
  ended for good.
- On a dropped connection the thread reconnects at once with `Last-Event-ID`, then with a
  short backoff (`RECONNECT_DELAYS`, at most `RECONNECT_WINDOW` seconds in all); a master
  that answers "no stream" or stays away ends the feed (`Gone`). A reconnection with no id
  to resume from (no event had come yet), or after an unreadable stream, is followed by a
  `Reset`, queued once the new subscription stands: what changed in between is fetched.
  A stream silent past `idle_timeout` (the master sends a keep-alive every 15 s) counts as
  dropped. `close()` ends the thread and its connection. The thread never raises: whatever
  goes wrong in it ends as `Gone` with a reason.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cli.client import MAX_REDIRECTS, ClusterError, MasterClient
from cli.sse import SSEError, SSEParser

__all__ = ["EVENTS_PATH", "Event", "EventFeed", "Gone", "Item", "Refusal", "Reset"]

EVENTS_PATH = "/master/events"
RECONNECT_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)  # seconds before each reconnection attempt
RECONNECT_WINDOW = 12.0  # seconds after a drop during which reconnecting is tried
CONNECT_TIMEOUT = 5.0  # seconds for a subscription's answer (then: poll, which says why)
IDLE_TIMEOUT = 45.0  # seconds without a byte: the connection is dead (keep-alives: 15 s)
_READ = 65536
_MAX_ERROR_BODY = 65536
_MAX_BATCH = 10_000  # items returned by one next()


@dataclass(frozen=True)
class Event:
    """A JSON object from the stream (`{"type": "task", ...}` and so on)."""

    payload: dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """Fetch the state again: events were missed, or one could not be read."""

    reason: str


@dataclass(frozen=True)
class Gone:
    """The stream ended and could not be resumed: poll from now on (`transient`: it may
    come back, so subscribing again later may help)."""

    reason: str
    transient: bool = True


Item = Event | Reset | Gone


@dataclass(frozen=True)
class Refusal:
    """Why there is no stream; `transient` when asking again later may succeed."""

    reason: str
    transient: bool


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class EventFeed:
    """One subscription to `/master/events`, kept alive by a reader thread (see module)."""

    def __init__(
        self,
        client: MasterClient,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        reconnect_delays: tuple[float, ...] = RECONNECT_DELAYS,
    ) -> None:
        self.client = client
        self.idle_timeout = idle_timeout
        self.reconnect_delays = reconnect_delays
        self.connections = 0  # subscriptions made, the first one included
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._parser = SSEParser()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self._ended = False

    # -- the caller's side ---------------------------------------------------------------

    @classmethod
    def open(cls, client: MasterClient, **kwargs: Any) -> EventFeed | Refusal:
        """Subscribe now: a running feed, or why the master gives none."""
        feed = cls(client, **kwargs)
        try:
            feed._connect()
        except _Refused as exc:
            return exc.refusal
        feed._thread = threading.Thread(target=feed._run, name="cluster-events", daemon=True)
        feed._thread.start()
        return feed

    @property
    def ended(self) -> bool:
        """True once `next()` returned `Gone`."""
        return self._ended

    def next(self, timeout: float) -> list[Item]:
        """What arrived within `timeout` seconds, oldest first (empty when nothing did)."""
        if self._ended:
            return []
        try:
            items = [self._queue.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return []
        while len(items) < _MAX_BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if any(isinstance(item, Gone) for item in items):
            self._ended = True
        return items

    def close(self) -> None:
        """End the subscription (idempotent; from the caller's thread)."""
        self._stop.set()
        self._hang_up()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    # -- the reader thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            gone = self._follow()
        except Exception as exc:  # noqa: BLE001 - a thread must not die with a traceback
            gone = Gone(f"the event stream failed ({type(exc).__name__}: {exc})")
        self._hang_up()
        if not self._stop.is_set():
            self._queue.put(gone)

    def _follow(self) -> Gone:
        """Read, and reconnect after each drop, until stopped or refused; why it ended."""
        while True:
            why, lost = self._read_until_dropped()
            if self._stop.is_set():
                return Gone("closed", transient=False)
            # With no id to resume from, the master cannot tell what was missed meanwhile.
            lost = lost or not self._parser.last_id
            try:
                self._reconnect()
            except _Refused as exc:
                return Gone(f"{why}; {exc.refusal.reason}", exc.refusal.transient)
            if lost:  # resubscribed from now: only now may the state be fetched again
                self._queue.put(Reset(why))

    def _read_until_dropped(self) -> tuple[str, bool]:
        """Read and parse until the connection ends: why, and whether events were lost."""
        resp = self._resp
        try:
            while resp is not None and not self._stop.is_set():
                data = resp.read1(_READ)
                if not data:
                    return "the master closed the event stream", False
                for sse in self._parser.feed(data):
                    self._queue.put(_item(sse.data))
            return "closed", False
        except SSEError as exc:
            self._parser = SSEParser()  # resume from now, not after the bad event
            return f"the event stream was unusable: {exc}", True
        except TimeoutError:
            return f"the event stream was silent for {self.idle_timeout:g}s", False
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            # AttributeError: http.client's response, closed under the read by close().
            return f"the event stream broke ({type(exc).__name__})", False
        finally:
            self._hang_up()

    def _reconnect(self) -> None:
        give_up = time.monotonic() + RECONNECT_WINDOW
        last = Refusal("could not reconnect", transient=True)
        for delay in self.reconnect_delays:
            if self._stop.wait(delay) or time.monotonic() > give_up:
                break
            try:
                self._connect()
                return
            except _Refused as exc:
                last = exc.refusal
                if not last.transient:
                    break
        raise _Refused(last)

    # -- one connection --------------------------------------------------------------------

    def _connect(self) -> None:
        """Open the stream, resuming after the last id seen; _Refused when there is none.
        A standby's redirect is followed; under zk:// the leader is looked up again when
        the one asked is gone or does not lead."""
        try:
            url = self.client.base + EVENTS_PATH
        except ClusterError as exc:  # no leader in ZooKeeper (yet)
            raise _Refused(Refusal(str(exc), transient=True)) from None
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self._parser.last_id:
            headers["Last-Event-ID"] = self._parser.last_id
        if self.client.secret:
            headers["Authorization"] = f"Bearer {self.client.secret}"
        for hop in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                timeout=min(self.client.timeout, CONNECT_TIMEOUT),
            )
            try:
                conn.request("GET", parts.path or EVENTS_PATH, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self.client.forget_leader()
                raise _Refused(
                    Refusal(str(self.client.unreachable(exc)), transient=True)
                ) from None
            location = resp.getheader("Location")
            if resp.status not in (307, 308) or not location or hop == MAX_REDIRECTS:
                break
            conn.close()
            self.client.forget_leader()
            url = urllib.parse.urljoin(url, location)
        ctype = resp.getheader("Content-Type") or ""
        if resp.status != 200 or not ctype.startswith("text/event-stream"):
            if resp.status in (307, 308, 503):
                self.client.forget_leader()
            raise _Refused(self._refusal(conn, resp, ctype))
        if conn.sock is not None:
            conn.sock.settimeout(self.idle_timeout)
        with self._lock:
            self._conn, self._resp = conn, resp
        self.connections += 1
        if self._stop.is_set():  # closed while connecting
            self._hang_up()

    def _refusal(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, ctype: str
    ) -> Refusal:
        try:
            body = resp.read(_MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            conn.close()
        if resp.status == 200:
            return Refusal(f"{EVENTS_PATH} is not an event stream ({ctype or 'no type'})", False)
        detail = self.client.http_error(resp.status, body)
        return Refusal(
            f"{EVENTS_PATH}: {detail}", transient=resp.status in (307, 308, 502, 503, 504)
        )

    def _hang_up(self) -> None:
        with self._lock:
            conn, self._conn, self._resp = self._conn, None, None
        if conn is None:
            return
        if conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in the thread
            except OSError:
                pass
        conn.close()


def _item(data: str) -> Item:
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return Reset("an event was not JSON")
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return Reset("an event was not a JSON object with a type")
    if payload["type"] == "reset":
        return Reset(str(payload.get("reason") or "the master asked for a reset"))
    return Event(payload)
