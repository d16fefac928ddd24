"""The master's event stream, `GET /master/events`: Server-Sent Events for the dashboard and
the CLI.

Contract (issue 14, DESIGN.md §3.7):
- One `data:` JSON object per event, each with an `id:` (`<boot>-<seq>`; `boot` changes when
  the master restarts). Payloads: `{"type": "task", "task": {...}}` (a task changed state;
  its `GET /master/tasks/<id>` JSON), `{"type": "progress", "tasks": [{"id", "progress",
  "updated_at"}, ...]}` (at most one entry per task per `progress_interval` seconds),
  `{"type": "slave", "slave": {...}}` (a slave changed state; its `/master/slaves` JSON), and
  `{"type": "reset", "reason": ...}`: the client missed events and must fetch the state again.
- A client that reconnects with `Last-Event-ID` first gets every event after that id that
  the bounded backlog still holds; an id from another boot, older than the backlog or
  malformed gets one `reset` event instead (it never silently misses anything).
- A comment line (`: keep-alive`) goes out after `keepalive` seconds without an event.
- Publishing is synchronous and costs O(subscribers): nothing waits on a client. The backlog
  is the one shared buffer; a subscriber more than `subscriber_buffer` events behind is
  dropped (its connection closed; it may reconnect and resume). Past `max_subscribers`
  open streams, a new one gets 503 with a JSON error.

Time comes from the libproc Clock, so tests pause it. Call every method on the event loop's
thread (the master's own handlers run there); `handle` is a plain aiohttp handler, usable
on aiohttp's router or behind a libproc route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web

from libproc import Clock, Timer

__all__ = [
    "Backlog",
    "Event",
    "EventHub",
    "HubFull",
    "HubLimits",
    "ProgressCoalescer",
    "parse_event_id",
]

log = logging.getLogger("master.events")
_WRITE_BATCH = 256  # events joined into one write at most
_LIVENESS_POLL = 1.0  # seconds (real time) between checks that a quiet client is still there

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class HubLimits:
    backlog: int = 4096  # events kept for Last-Event-ID resume
    subscriber_buffer: int = 1024  # how far (events) a subscriber may lag before it is dropped
    max_subscribers: int = 64
    keepalive: float = 15.0  # seconds of silence before a keep-alive comment
    progress_interval: float = 1.0  # at most one progress entry per task this often
    retry_ms: int = 2000  # the reconnection delay the stream asks EventSource for

    def __post_init__(self) -> None:
        if not 0 < self.subscriber_buffer <= self.backlog:
            raise ValueError("subscriber_buffer must be > 0 and at most backlog: a subscriber "
                             "reads the shared backlog, so it cannot lag further than it holds")


# -- pure parts ------------------------------------------------------------------------------


@dataclass
class Event:
    """One published event; its frame is serialized once, at first delivery, and shared."""

    seq: int
    payload: dict[str, Any]
    _frame: bytes | None = field(default=None, repr=False)

    def frame(self, boot: str) -> bytes:
        if self._frame is None:
            try:
                data = json.dumps(self.payload, separators=(",", ":"), allow_nan=False,
                                  default=str)
            except ValueError:  # NaN somewhere: JSON.parse would refuse it; say "refetch"
                data = json.dumps({"type": "reset", "time": self.payload.get("time"),
                                   "reason": "an event could not be encoded"})
            self._frame = f"id: {boot}-{self.seq}\ndata: {data}\n\n".encode()
        return self._frame


def parse_event_id(value: str, boot: str) -> int | None:
    """The sequence number in a `Last-Event-ID` of this boot, or None when it is not one
    (another boot, garbage, a forged huge number): the caller then sends `reset`."""
    prefix, sep, seq = value.strip().rpartition("-")
    if not sep or prefix != boot or not seq.isdigit() or len(seq) > 18:
        return None
    return int(seq)


class Backlog:
    """The last `size` events, in order; pure (no I/O, no clock)."""

    def __init__(self, size: int) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self.last_seq = 0

    def append(self, payload: dict[str, Any]) -> Event:
        self.last_seq += 1
        event = Event(self.last_seq, payload)
        self._events.append(event)
        return event

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (last_seq + 1 when empty)."""
        return self._events[0].seq if self._events else self.last_seq + 1

    def since(self, seq: int) -> list[Event] | None:
        """Events after `seq`, or None when some of them were already evicted (or `seq` is
        in the future): the reader missed events and must start again from the state."""
        if seq > self.last_seq or seq < self.first_seq - 1:
            return None
        skip = seq - self.first_seq + 1  # seqs are consecutive, so this is an index
        return [self._events[i] for i in range(max(skip, 0), len(self._events))]

    def __len__(self) -> int:
        return len(self._events)


class ProgressCoalescer(Generic[K, V]):
    """At most one emission per key per `interval`; later values wait, the latest wins.

    Pure: the caller passes `now`. `offer` says whether a value may go out at once; held
    values come out of `due(now)` once their key's window has ended. Memory is bounded by
    the keys emitted within the last interval plus the held ones.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[K, float] = {}  # key -> when it was last emitted
        self._held: dict[K, V] = {}
        self._sweep_at = 64

    def offer(self, key: K, value: V, now: float) -> bool:
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._held.pop(key, None)
            self._last[key] = now
            if len(self._last) > self._sweep_at:
                self._sweep(now)
            return True
        self._held[key] = value
        return False

    def due(self, now: float) -> list[tuple[K, V]]:
        out = [(k, v) for k, v in self._held.items()
               if now - self._last.get(k, now - self.interval) >= self.interval]
        for k, _ in out:
            del self._held[k]
            self._last[k] = now
        self._sweep(now)
        return out

    def next_due(self) -> float | None:
        """When the earliest held value may go out; None when nothing is held."""
        if not self._held:
            return None
        return min(self._last.get(k, 0.0) for k in self._held) + self.interval

    def forget(self, key: K) -> None:
        """Drop a held value (e.g. the task changed state: that event carries its progress)."""
        self._held.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._last = {k: t for k, t in self._last.items()
                      if now - t < self.interval or k in self._held}
        self._sweep_at = 2 * len(self._last) + 64

    def __len__(self) -> int:
        return len(self._held)


# -- the hub ---------------------------------------------------------------------------------


class HubFull(Exception):
    """No room for another subscriber (the 503 of `GET /master/events`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many event stream subscribers (at most {limit}); close another "
                         "dashboard tab or retry later")


class _Subscriber:
    __slots__ = ("cursor", "wake", "dropped", "closed", "task", "transport", "peer")

    def __init__(self, cursor: int, peer: str) -> None:
        self.cursor = cursor  # the last seq written to this subscriber
        self.wake = asyncio.Event()
        self.dropped = False
        self.closed = False
        self.task: asyncio.Task[Any] | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.peer = peer


class EventHub:
    """Fan-out of the master's events to SSE subscribers, with a resume backlog."""

    def __init__(self, limits: HubLimits | None = None, boot: str | None = None) -> None:
        self.limits = limits or HubLimits()
        self.boot = boot or secrets.token_hex(4)
        self.backlog = Backlog(self.limits.backlog)
        self.progress = ProgressCoalescer[str, tuple[float, float]](
            self.limits.progress_interval)
        self._ready: dict[str, tuple[float, float]] = {}
        self._ready_scheduled = False
        self._progress_timer: Timer | None = None
        self._subs: set[_Subscriber] = set()
        self.counters = {"events_published": 0, "event_subscribers_dropped": 0,
                         "event_subscribers_refused": 0}

    # -- publishing (the master calls these) ---------------------------------------------

    def publish_task(self, task: dict[str, Any]) -> None:
        """A task changed state; `task` is its API JSON (taken as is: pass a fresh dict)."""
        tid = str(task.get("id"))
        self.progress.forget(tid)
        self._ready.pop(tid, None)
        self._publish({"type": "task", "task": task})

    def publish_progress(self, task_id: str, progress: float, at: float | None = None) -> None:
        """A task's progress changed (`at`: its `updated_at`, default now); coalesced."""
        now = Clock.now()
        value = (float(progress), now if at is None else float(at))
        if self.progress.offer(task_id, value, now):
            self._ready[task_id] = value
            if not self._ready_scheduled:
                self._ready_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_ready)
        else:
            self._arm_progress_timer()

    def publish_slave(self, slave: dict[str, Any]) -> None:
        """A slave changed state (registered, disconnected, lost, removed, ...)."""
        self._publish({"type": "slave", "slave": slave})

    def _flush_ready(self) -> None:
        self._ready_scheduled = False
        ready, self._ready = self._ready, {}
        self._publish_progress(ready.items())

    def _arm_progress_timer(self) -> None:
        due = self.progress.next_due()
        if due is None or self._progress_timer is not None:
            return
        self._progress_timer = Clock.timer(max(0.0, due - Clock.now()), self._flush_held)

    def _flush_held(self) -> None:
        self._progress_timer = None
        self._publish_progress(self.progress.due(Clock.now()))
        self._arm_progress_timer()

    def _publish_progress(self, items: Iterable[tuple[str, tuple[float, float]]]) -> None:
        tasks = [{"id": tid, "progress": round(p, 6), "updated_at": at}
                 for tid, (p, at) in items]
        if tasks:
            self._publish({"type": "progress", "tasks": tasks})

    def _publish(self, payload: dict[str, Any]) -> None:
        payload["time"] = Clock.now()
        event = self.backlog.append(payload)
        self.counters["events_published"] += 1
        bound = self.limits.subscriber_buffer
        for sub in list(self._subs):
            if event.seq - sub.cursor > bound:
                self._drop(sub)
            else:
                sub.wake.set()

    # -- subscribers ---------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def stats(self) -> dict[str, int]:
        """For the master's /vars: counters, subscribers now, events in the backlog."""
        return {**self.counters, "event_subscribers": len(self._subs),
                "events_backlog": len(self.backlog)}

    def _subscribe(self, last_event_id: str | None, peer: str) -> tuple[_Subscriber, bool]:
        """A new subscriber, and whether it must be sent `reset` first."""
        if len(self._subs) >= self.limits.max_subscribers:
            self.counters["event_subscribers_refused"] += 1
            raise HubFull(self.limits.max_subscribers)
        cursor, reset = self.backlog.last_seq, False
        if last_event_id is not None:
            seq = parse_event_id(last_event_id, self.boot)
            replay = None if seq is None else self.backlog.since(seq)
            if replay is None:
                reset = True
            else:
                assert seq is not None
                cursor = seq
                if self.backlog.last_seq - cursor > self.limits.subscriber_buffer:
                    reset, cursor = True, self.backlog.last_seq
        sub = _Subscriber(cursor, peer)
        self._subs.add(sub)
        return sub, reset

    def _drop(self, sub: _Subscriber) -> None:
        if sub.dropped or sub.closed:
            return
        sub.dropped = True
        self.counters["event_subscribers_dropped"] += 1
        log.warning("event stream subscriber %s dropped: more than %d events behind",
                    sub.peer, self.limits.subscriber_buffer)
        self._subs.discard(sub)
        sub.wake.set()
        # It may be stuck writing to a full socket: close it under the writer (the pending
        # write then fails); cancel the writer only when the transport cannot be aborted.
        abort = getattr(sub.transport, "abort", None)
        try:
            abort()  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - no transport, or one without abort()
            if sub.task is not None:
                sub.task.cancel()

    def close(self) -> None:
        """End every stream (the master is stopping); clients will reconnect elsewhere."""
        for sub in list(self._subs):
            sub.closed = True
            sub.wake.set()
        self._subs.clear()
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None

    # -- the SSE writer ------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """`GET /master/events`: stream until the client leaves, is dropped or we close."""
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": f"{request.method} not allowed on the event "
                                      "stream; use GET"}, status=405, headers={"Allow": "GET"})
        try:
            sub, reset = self._subscribe(request.headers.get("Last-Event-ID"),
                                         str(request.remote))
        except HubFull as exc:
            return web.json_response({"error": str(exc)}, status=503,
                                     headers={"Retry-After": "5"})
        sub.task = asyncio.current_task()
        sub.transport = request.transport
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",
            "X-Content-Type-Options": "nosniff",
        })
        try:
            await resp.prepare(request)
            if request.method == "HEAD":
                return resp
            await resp.write(f"retry: {self.limits.retry_ms}\n: connected\n\n".encode())
            if reset:
                await resp.write(self._reset_frame(sub))
            await self._pump(sub, request, resp)
        except asyncio.CancelledError:
            if not sub.dropped:
                raise  # the client left (or the server is stopping)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancel, from _drop: handled here
        except (ConnectionError, RuntimeError, OSError):
            pass  # the client went away mid-write (aiohttp raises one of these)
        finally:
            self._subs.discard(sub)
        return resp

    def _reset_frame(self, sub: _Subscriber) -> bytes:
        # Not in the backlog (it is for this client only); its id is the current position,
        # so a reconnect after it resumes from here.
        data = json.dumps({"type": "reset", "time": Clock.now(),
                           "reason": "events were missed (a master restart, or too far "
                           "behind): fetch the state again"})
        return f"id: {self.boot}-{sub.cursor}\ndata: {data}\n\n".encode()

    async def _pump(self, sub: _Subscriber, request: web.BaseRequest,
                    resp: web.StreamResponse) -> None:
        keepalive = self.limits.keepalive
        while True:
            events = self.backlog.since(sub.cursor)
            if events is None:  # fell out of the backlog while writing
                self._drop(sub)
                return
            # One write per burst, not per event: far fewer syscalls when events pile up.
            for start in range(0, len(events), _WRITE_BATCH):
                batch = events[start:start + _WRITE_BATCH]
                await resp.write(b"".join(event.frame(self.boot) for event in batch))
                sub.cursor = batch[-1].seq
            if sub.dropped or sub.closed:
                return
            if sub.cursor < self.backlog.last_seq:
                continue
            sub.wake.clear()
            woke = await _wait_or_timeout(sub.wake, keepalive, lambda: _alive(request))
            if woke == "gone" or sub.dropped or sub.closed:
                return
            if woke == "timeout":
                await resp.write(b": keep-alive\n\n")


def _alive(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def _wait_or_timeout(event: asyncio.Event, seconds: float,
                           alive: Callable[[], bool]) -> str:
    """Wait for `event` at most `seconds` of libproc Clock time: "event", "timeout", or
    "gone" when `alive()` turns false (checked each second of real time: aiohttp does not
    tell a GET handler that its client left unless handler cancellation is on)."""
    loop = asyncio.get_running_loop()
    timed_out = loop.create_future()

    def fire() -> None:
        if not timed_out.done():
            timed_out.set_result(None)

    timer = Clock.timer(seconds, fire)
    waiter = asyncio.ensure_future(event.wait())
    try:
        while True:
            await asyncio.wait([waiter, timed_out], timeout=_LIVENESS_POLL,
                               return_when=asyncio.FIRST_COMPLETED)
            if event.is_set():
                return "event"
            if timed_out.done():
                return "timeout"
            if not alive():
                return "gone"
    finally:
        timer.cancel()
        waiter.cancel()
        if not timed_out.done():
            timed_out.cancel()
