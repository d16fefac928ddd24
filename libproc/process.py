"""Process: an actor with a UPID, a FIFO mailbox, message handlers and HTTP routes.

A process handles one event at a time, in arrival order: messages, dispatches, HTTP requests,
`exited` notices, and finally its termination. A handler may be a coroutine function: the mailbox
then waits for it before the next event (so keep such handlers short, and never await a dispatch
to yourself from one: that raises DeadlockError instead of hanging). Any other return value of a
message, `exited`, `initialize` or `finalize` handler, a Future included, is ignored: it does not
hold up the mailbox (a dispatch's or route's Future becomes that call's result instead). A
handler that raises is logged and counted; the process carries on. Only the process's own
handlers touch its state.

Subclass it, `install()` message handlers and `route()` endpoints in `initialize()`, then
`libproc.spawn(MyProcess())`. `finalize()` runs as the last event before the process is gone.
A process has its UPID (`pid`) as soon as the runtime runs, before it is spawned, so two
processes can be wired to each other first and spawned after.

Every message, dispatch and `exited` event passes the event filter (`libproc.testing`) on its
way into a mailbox; with no filter installed that costs one comparison.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextvars import copy_context
from types import CoroutineType
from typing import Any

from libproc import _context
from libproc.future import _PLAIN, DISCARDED, PENDING, READY, Future, Promise
from libproc.metrics import metrics
from libproc.pid import ID, UPID

__all__ = ["Process", "Dispatch", "MessageHandler", "RouteHandler"]

log = logging.getLogger("libproc.process")

MessageHandler = Callable[[UPID, bytes], Any]
RouteHandler = Callable[[Any], Any]

# Event kinds: an event is a tuple (kind, ...), but for a Dispatch and a message (see _MESSAGE).
MESSAGE, DISPATCH, HTTP, EXITED, TERMINATE, INITIALIZE = range(6)
_KIND_NAMES = ("MESSAGE", "DISPATCH", "HTTP", "EXITED", "TERMINATE", "INITIALIZE")

# How many events one turn of the event loop may handle for one process before yielding.
_BATCH = 256

# The event filter (libprocess's `filter()`, installed by libproc.testing): called as
# `_filter(process, event)` for MESSAGE, DISPATCH and EXITED events; True drops the event.
EventFilter = Callable[["Process", tuple[Any, ...]], bool]
_filter: EventFilter | None = None
_FILTERED = frozenset((MESSAGE, DISPATCH, EXITED))


class _Mark:
    """Marks where a message starts in a mailbox; see `Process._enqueue_message`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<message>"


# A message waits in a mailbox as four entries, _MESSAGE, sender, name, body, not as one
# tuple: a burst of messages then leaves nothing new for the garbage collector to trace (a
# name and a body are not containers, the sender is one shared UPID), where a tuple a message
# had every collection walk the whole backlog. Every other event is one entry: a tuple, or a
# Dispatch.
_MESSAGE = _Mark()


def set_filter(event_filter: EventFilter | None) -> None:
    """Install (or, with None, remove) the one event filter; see libproc.testing."""
    global _filter
    _filter = event_filter


# Dispatch's bits of Future._flags (Future's own are 1, 2 and 4): `_fn` is a function of the
# target's class, called with the process first; `_args` is (args, kwargs).
_CALL_METHOD = 8
_CALL_KWARGS = 16


class Dispatch(Future[Any]):
    """A dispatch waiting in a mailbox: the call and the Future of its result, one object.

    Made by `libproc.dispatch`. A burst of dispatches is paid mostly in the garbage
    collector's passes over what waits in the mailbox, so a dispatch is one allocation (not an
    event tuple, a Future and a bound method). A method of the target process is kept as its
    function and called with the process first. The call is dropped once it has run (the
    Future may outlive it; its arguments need not).

    Awaiting one (`await dispatch(pid, ...)`) whose process is idle, with this call first in
    its mailbox, runs the call at once on the awaiting task (in a copy of its context, as the
    event loop would), then yields to the loop once, as an await of a pending future does: one
    turn of the loop instead of two, with the mailbox order kept (nothing was before it).
    """

    # Future's slots, and three: each slot is one more visit per dispatch in every pass of
    # the garbage collector over a backlog. Whether `_fn` is a method of the target process
    # and whether `_args` is (args, kwargs) are two bits of Future's `_flags`.
    __slots__ = ("_target", "_fn", "_args")

    def __init__(self, target: Process, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any] | None, method: bool) -> None:
        # Future.__init__(self, False), inlined (tests/test_libproc_dispatch.py checks that
        # every slot of Future is set here too).
        self._state = PENDING
        self._value = None
        self._callbacks = None
        self._discard_callbacks = None
        self._abandoned_callbacks = None
        self._target = target
        self._fn: Any = fn  # None once run
        if kwargs:
            self._args: Any = (args, kwargs)  # None once run
            self._flags = _CALL_METHOD | _CALL_KWARGS if method else _CALL_KWARGS
        else:
            self._args = args
            self._flags = _CALL_METHOD if method else 0

    def _event(self) -> tuple[Any, ...]:
        """The event as the filter (libproc.testing) sees it:
        (DISPATCH, callable, args, kwargs, future)."""
        fn, args, kwargs = self._fn, self._args, {}
        if fn is not None:
            if self._flags & _CALL_KWARGS:
                args, kwargs = args
            if self._flags & _CALL_METHOD:
                fn = fn.__get__(self._target)
        return (DISPATCH, fn, args, kwargs, self)

    def __await__(self) -> Generator[Any, None, Any]:
        proc = self._target
        if (self._state is PENDING and not proc._busy and not proc._in_run
                and proc._mailbox and proc._mailbox[0] is self):
            if proc._run_handle is not None:  # _run reschedules itself if more events wait
                proc._run_handle.cancel()
            copy_context().run(proc._run, 1)
            if self._state is not PENDING:
                yield  # one turn of the loop, as awaiting a pending future would give
                if self._state is READY:
                    return self._value
                return self.get()
        return (yield from Future.__await__(self))


class Process:
    """Base class of every actor; see the module docstring."""

    def __init__(self, id: str | None = None, *, prefix: str | None = None) -> None:  # noqa: A002
        self._id = id if id is not None else ID.generate(prefix or type(self).__name__.lower())
        self._pid: UPID | None = None
        self._mailbox: deque[Any] = deque()  # events: see _MESSAGE
        self._handlers: dict[str, MessageHandler] = {}
        self._routes: dict[str, tuple[RouteHandler, str]] = {}
        self._scheduled = False  # a call of _run is on its way (_run_handle)
        self._run_handle: asyncio.Handle | None = None
        self._in_run = False  # inside _run (its handlers may make more events)
        self._busy = False  # a coroutine handler is running: the mailbox waits for it
        self._handler_task: asyncio.Task[None] | None = None
        self._state = "created"  # created | running | terminating | terminated
        self._current_from: UPID | None = None
        self._done: Promise[bool] = Promise()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: Any = None

    # -- identity -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def pid(self) -> UPID:
        """This process's UPID (libprocess's `self()`): known once the runtime runs, even
        before the process is spawned (it is the runtime's address with this id)."""
        if self._pid is None:
            rt = _context.runtime
            if rt is None:
                raise RuntimeError(
                    f"process {self._id!r} has no UPID yet: libproc is not running; start it "
                    "(`await libproc.start()`) and spawn it first")
            self._pid = rt.address.with_id(self._id)
        return self._pid

    @property
    def state(self) -> str:
        return self._state

    # -- hooks for subclasses -----------------------------------------------------------

    def initialize(self) -> Any:
        """First event of the process: install handlers and routes here."""

    def finalize(self) -> Any:
        """Last event of the process, when it is being terminated."""

    def exited(self, pid: UPID) -> Any:
        """A linked process exited (its connection broke, or it terminated locally)."""

    def visit_message(self, sender: UPID, name: str, body: bytes) -> Any:
        """A message with no installed handler: dropped, counted."""
        metrics.inc("libproc/messages_unhandled")
        log.debug("%s: no handler for message %r from %s; dropped", self._id, name, sender)

    # -- registration -------------------------------------------------------------------

    def install(self, name: str, handler: MessageHandler) -> None:
        """Handle messages called `name` with `handler(sender_upid, body_bytes)`."""
        self._handlers[name] = handler

    def delegate(self, name: str, to: UPID) -> None:
        """Forward every message called `name` to `to`, keeping its sender (libprocess's
        per-message `delegate`); it replaces a handler installed for `name`, and a later
        `install(name, ...)` replaces the delegation."""

        def forward(sender: UPID, body: bytes) -> None:
            self._require_runtime("delegate").send(sender, to, name, body)

        self._handlers[name] = forward

    def route(self, path: str, handler: RouteHandler, description: str = "") -> None:
        """Serve `handler(request)` at `/<id><path>`; it returns an aiohttp response, a str,
        bytes, a dict/list (JSON), a Future or a coroutine. `/` catches every path below."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r} must start with '/'")
        self._routes[path.rstrip("/") or "/"] = (handler, description)

    def _find_route(self, path: str) -> tuple[str, RouteHandler] | None:
        """libprocess's lookup: the longest installed route that is a segment prefix of
        `path`, as (route path, handler)."""
        path = path.rstrip("/") or "/"
        while True:
            hit = self._routes.get(path)
            if hit is not None:
                return path, hit[0]
            if path == "/":
                return None
            cut = path.rfind("/")
            path = path[:cut] or "/"

    # -- messaging ----------------------------------------------------------------------

    def send(self, to: UPID, name: str, body: bytes = b"") -> None:
        """Send a message (at most once, FIFO per receiver); never blocks."""
        rt = self._runtime
        if rt is None:
            self._require_runtime("send")
        rt.send(self._pid, to, name, body)

    def link(self, to: UPID, relink: bool = False) -> UPID:
        """Be told through `exited(to)` when `to` goes away (once per link)."""
        self._require_runtime("link").link(self, to, relink)
        return to

    @property
    def sender(self) -> UPID | None:
        """The sender of the message being handled now (None outside a message handler)."""
        return self._current_from

    def _require_runtime(self, action: str) -> Any:
        if self._runtime is None:
            raise RuntimeError(f"{action} from process {self._id!r} before it was spawned")
        return self._runtime

    # -- mailbox ------------------------------------------------------------------------

    def _enqueue(self, event: tuple[Any, ...] | Dispatch, front: bool = False) -> None:
        """Put an event into the mailbox (at its front for an injected termination), past
        the event filter; the process runs soon. A (MESSAGE, sender, name, body) tuple is
        taken as `_enqueue_message`."""
        if type(event) is tuple and event[0] == MESSAGE:
            self._enqueue_message(event[1], event[2], event[3], front)
            return
        if _filter is not None and self._filter_drops(event):
            return
        if front:
            self._mailbox.appendleft(event)
        else:
            self._mailbox.append(event)
        if not self._scheduled and not self._busy:
            self._scheduled = True
            assert self._loop is not None
            self._run_handle = self._loop.call_soon(self._run)

    def _enqueue_message(self, sender: UPID, name: str, body: bytes, front: bool = False
                         ) -> None:
        """Put a message into the mailbox, past the event filter (see _MESSAGE)."""
        if _filter is not None and _filter(self, (MESSAGE, sender, name, body)):
            return
        if front:
            self._mailbox.extendleft((body, name, sender, _MESSAGE))
        else:
            self._mailbox.extend((_MESSAGE, sender, name, body))
        if not self._scheduled and not self._busy:
            self._scheduled = True
            assert self._loop is not None
            self._run_handle = self._loop.call_soon(self._run)

    def _schedule_run(self) -> None:
        """Have the loop call `_run` soon (`_enqueue` does the same, inlined)."""
        self._scheduled = True
        assert self._loop is not None
        self._run_handle = self._loop.call_soon(self._run)

    def _filter_drops(self, event: tuple[Any, ...] | Dispatch) -> bool:
        """True if the event filter drops `event` (a dropped dispatch is abandoned)."""
        assert _filter is not None
        if isinstance(event, Dispatch):
            if _filter(self, event._event()):
                event._abandon()  # it will never run
                return True
            return False
        return event[0] in _FILTERED and _filter(self, event)

    def _idle(self) -> bool:
        return not self._mailbox and not self._busy

    def _run(self, batch: int = _BATCH) -> None:
        """Handle up to `batch` events, then yield to the loop (rescheduled if more wait).

        Dispatches and messages, the hot kinds, are handled here; the rest in `_handle`. An
        awaited Dispatch at the head of an idle mailbox calls `_run(1)` itself (see Dispatch).
        """
        self._scheduled = False
        self._run_handle = None
        if self._busy:
            return
        mailbox = self._mailbox
        popleft = mailbox.popleft
        token = _context.current_pid.set(self._pid)
        self._in_run = True
        try:
            n = 0
            while mailbox and n < batch:
                event = popleft()
                n += 1
                if event is _MESSAGE:
                    sender = popleft()
                    name = popleft()
                    body = popleft()
                    self._current_from = sender
                    handler = self._handlers.get(name)
                    try:
                        if handler is None:
                            result = self.visit_message(sender, name, body)
                        else:
                            result = handler(sender, body)
                    except Exception as exc:
                        self._current_from = None
                        self._handler_failed((MESSAGE, sender, name, body), exc)
                        continue
                    if result is not None and type(result) is CoroutineType:
                        self._start_handler(result, (MESSAGE, sender, name, body))
                        return
                    self._current_from = None
                    continue
                if type(event) is Dispatch:
                    fn, args = event._fn, event._args
                    event._fn = event._args = None  # the Future may outlive the call
                    flags = event._flags
                    try:
                        if flags & _CALL_KWARGS:  # Dispatch._call, inlined: the hot path
                            args, kwargs = args
                            result = (fn(self, *args, **kwargs) if flags & _CALL_METHOD
                                      else fn(*args, **kwargs))
                        elif flags & _CALL_METHOD:
                            result = fn(self, *args)
                        else:
                            result = fn(*args)
                    except Exception as exc:
                        event._fail(exc)
                        continue
                    if type(result) in _PLAIN:
                        event._complete(READY, result)
                    elif type(result) is CoroutineType:
                        self._start_handler(result, event)
                        return
                    else:
                        event._set(result)
                    continue
                pending = self._handle(event)
                if pending is not None:
                    self._start_handler(pending, event)
                    return
                if self._state == "terminated":
                    return
        finally:
            self._in_run = False
            _context.current_pid.reset(token)
        if mailbox and not self._scheduled:
            self._schedule_run()

    def _start_handler(self, pending: Awaitable[Any], event: tuple[Any, ...] | Dispatch
                       ) -> None:
        """Run a coroutine handler as a task; the mailbox waits until it is done."""
        self._busy = True
        assert self._loop is not None
        self._handler_task = self._loop.create_task(self._await_handler(pending, event))

    async def _await_handler(self, pending: Awaitable[Any], event: tuple[Any, ...] | Dispatch
                             ) -> None:
        kind = DISPATCH if isinstance(event, Dispatch) else event[0]
        try:
            result = await pending
            if isinstance(event, Dispatch):
                event._set(result)
            elif kind == HTTP:
                event[3]._set(result)
        except BaseException as exc:  # noqa: BLE001 - a handler must never kill the actor
            self._handler_failed(event, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._current_from = None
            self._busy = False
            self._handler_task = None
            if kind in (TERMINATE, INITIALIZE):
                self._after_special(kind)
            if self._state != "terminated" and self._mailbox and not self._scheduled:
                self._schedule_run()

    def _handler_failed(self, event: tuple[Any, ...] | Dispatch, exc: BaseException) -> None:
        if isinstance(event, Dispatch):
            event._fail(exc)
            return
        kind = event[0]
        if kind == HTTP:
            event[3]._fail(exc)
            return
        metrics.inc("libproc/handler_errors")
        if isinstance(exc, asyncio.CancelledError):
            log.warning("%s: %s handler was cancelled", self._id, _KIND_NAMES[kind])
        else:
            log.error("%s: %s handler raised", self._id, _KIND_NAMES[kind], exc_info=exc)

    def _handle(self, event: tuple[Any, ...]) -> Awaitable[Any] | None:
        """Handle one HTTP, EXITED, INITIALIZE or TERMINATE event (`_run` handles messages
        and dispatches itself); returns an awaitable when the handler is a coroutine."""
        kind = event[0]
        try:
            if kind == HTTP:
                _, handler, request, future = event
                result = handler(request)
                if inspect.iscoroutine(result):
                    return result
                future._set(result)
                return None
            if kind == EXITED:
                result = self.exited(event[1])
                return result if inspect.iscoroutine(result) else None
            if kind == INITIALIZE:
                self._state = "running"
                result = self.initialize()
                if inspect.iscoroutine(result):
                    return result
                self._after_special(INITIALIZE)
                return None
            if kind == TERMINATE:
                self._state = "terminating"
                result = self.finalize()
                if inspect.iscoroutine(result):
                    return result
                self._after_special(TERMINATE)
                return None
        except Exception as exc:
            self._current_from = None
            self._handler_failed(event, exc)
            if kind in (TERMINATE, INITIALIZE):
                self._after_special(kind)
        return None

    def _after_special(self, kind: int) -> None:
        if kind == TERMINATE and self._state != "terminated":
            self._state = "terminated"
            leftover, self._mailbox = self._mailbox, deque()
            for event in _mailbox_events(leftover):  # DISCARDED (not abandoned): awaiting
                if isinstance(event, Dispatch):   # callers learn at once
                    event._fn = event._args = None
                    event._complete(DISCARDED)
                elif event[0] == HTTP:
                    event[3]._complete(DISCARDED)
            leftover.clear()
            self._runtime._terminated(self)
            self._done.set(True)

    def _describe_events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in itertools.islice(_mailbox_events(self._mailbox.copy()), 1000):
            if isinstance(event, Dispatch):
                out.append({"type": "DISPATCH"})
                continue
            item: dict[str, Any] = {"type": _KIND_NAMES[event[0]]}
            if event[0] == MESSAGE:
                item["name"] = event[2]
            out.append(item)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._pid or self._id} {self._state}>"


def _mailbox_events(mailbox: deque[Any]) -> Iterator[tuple[Any, ...] | Dispatch]:
    """The events of a mailbox in order, each message as a (MESSAGE, sender, name, body)
    tuple (see _MESSAGE)."""
    entries = iter(mailbox)
    for entry in entries:
        if entry is _MESSAGE:
            yield (MESSAGE, next(entries), next(entries), next(entries))
        else:
            yield entry


def _done_future(process: Process) -> Future[bool]:
    return process._done.future
