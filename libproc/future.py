"""Future/Promise: libprocess's composable results, usable from asyncio too.

A Future is PENDING, then exactly one of READY (a value), FAILED (a message, and the exception
when one caused it) or DISCARDED (its producer gave up). Callbacks run synchronously, in the
order they were added, on whatever code completes the future; one added to a completed future
runs at once. `discard()` on a future only *requests* a discard: whoever holds the Promise sees
it through `on_discard` and decides (`then` passes the request upstream, and a value that
arrives after the request does not run the next `then` callback: the chain ends DISCARDED).

A PENDING future is *abandoned* once nothing is left that could complete it: its Promise was
garbage-collected without completing (or associating) it, or it was made by `Future()` with no
Promise at all. `is_abandoned()` says so, `on_abandoned(cb)` runs `cb` then, and `then`,
`repair`, `recover`, `collect` and `await_` pass it on as libprocess does. The flag is set the
moment the Promise goes; callbacks of a Promise dropped by the garbage collector run on the
next turn of the event loop (never in the middle of whatever code the collector interrupted).

A Future is awaitable (`value = await future`): a FAILED future raises the exception that failed
it (or FutureFailedError), a DISCARDED one raises FutureDiscardedError, an abandoned one
FutureAbandonedError (instead of hanging forever), and cancelling the awaiting task requests a
discard. Anything awaitable becomes a Future with `as_future()`.

    >>> p = Promise[int]()
    >>> doubled = p.future.then(lambda v: v * 2)
    >>> p.set(21)
    True
    >>> doubled.get()
    42
    >>> print(doubled)
    Ready
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from libproc import _context
from libproc.errors import (
    DeadlockError,
    FutureAbandonedError,
    FutureDiscardedError,
    FutureError,
    FutureFailedError,
    FuturePendingError,
)

__all__ = ["Future", "Promise", "as_future", "PENDING", "READY", "FAILED", "DISCARDED"]

T = TypeVar("T")
U = TypeVar("U")

PENDING = "PENDING"
READY = "READY"
FAILED = "FAILED"
DISCARDED = "DISCARDED"

log = logging.getLogger("libproc.future")


def _run(cb: Callable[..., Any], *args: Any) -> None:
    try:
        cb(*args)
    except Exception:
        log.exception("future callback %r raised", cb)


# Types that are never awaitable: `set` completes with them at once.
_PLAIN = frozenset((type(None), bool, int, float, str, bytes, list, tuple, dict, set))


# Future._flags bits (Dispatch adds its own above these; see libproc.process).
_DISCARD_REQUESTED = 1
_ASSOCIATED = 2
_ABANDONED = 4


def _as_error(error: str | BaseException) -> BaseException:
    return error if isinstance(error, BaseException) else FutureFailedError(error)


class Future(Generic[T]):
    """The read side of a result; see the module docstring for the contract.

    `Future()` has no Promise, so it is abandoned from the start (libprocess's `Future<T>()`);
    make a completable one with `Promise()`, or a completed one with `Future.ready()`,
    `Future.failed()` or `Future.discarded()`.
    """

    # Few slots, on purpose: a burst of dispatches leaves one Future each in a mailbox, and
    # every pass of CPython's collector visits each slot of each (three flags folded into
    # one int, the error into the value and the target moved to Dispatch took a burst's
    # collector time from 126 to 97 ms). `_value` is the value when READY
    # and the exception when FAILED; `_flags` holds _DISCARD_REQUESTED, _ASSOCIATED (takes
    # another future's outcome: its own producer may not set it) and _ABANDONED.
    __slots__ = ("_state", "_value", "_callbacks", "_flags", "_discard_callbacks",
                 "_abandoned_callbacks", "__weakref__")

    # The Process that will complete this future, used to refuse an await from inside that
    # process's own running handler, which would deadlock: a slot of Dispatch only (the
    # futures that dispatch makes), None for every other future.
    _target: Any = None

    def __init__(self, _abandoned: bool = True) -> None:
        self._state = PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Future[T]], Any]] | None = None
        self._flags = _ABANDONED if _abandoned else 0
        self._discard_callbacks: list[Callable[[], Any]] | None = None
        self._abandoned_callbacks: list[Callable[[], Any]] | None = None

    # -- construction -------------------------------------------------------------------

    @staticmethod
    def ready(value: U) -> Future[U]:
        f: Future[U] = Future(False)
        f._state, f._value = READY, value
        return f

    @staticmethod
    def failed(error: str | BaseException) -> Future[Any]:
        f: Future[Any] = Future(False)
        f._state, f._value = FAILED, _as_error(error)
        return f

    @staticmethod
    def discarded() -> Future[Any]:
        f: Future[Any] = Future(False)
        f._state = DISCARDED
        return f

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def is_pending(self) -> bool:
        return self._state is PENDING

    def is_ready(self) -> bool:
        return self._state is READY

    def is_failed(self) -> bool:
        return self._state is FAILED

    def is_discarded(self) -> bool:
        return self._state is DISCARDED

    def is_abandoned(self) -> bool:
        """True once nothing is left that could complete this (still PENDING) future."""
        return bool(self._flags & _ABANDONED)

    def has_discard(self) -> bool:
        """True once someone asked to discard this future."""
        return bool(self._flags & _DISCARD_REQUESTED)

    def get(self) -> T:
        """The value of a READY future; raises for any other state."""
        if self._state is READY:
            return self._value  # type: ignore[no-any-return]
        if self._state is FAILED:
            raise self._value
        if self._state is DISCARDED:
            raise FutureDiscardedError()
        if self._flags & _ABANDONED:
            raise FutureAbandonedError()
        raise FuturePendingError("get() on a PENDING future; await it or add a callback")

    def failure(self) -> str:
        """The failure message of a FAILED future."""
        if self._state is not FAILED:
            raise FutureError(f"failure() on a {self._state} future")
        return str(self._value) or type(self._value).__name__

    @property
    def exception(self) -> BaseException | None:
        """What failed a FAILED future; None in any other state."""
        return self._value if self._state is FAILED else None

    # -- callbacks ----------------------------------------------------------------------

    def on_any(self, cb: Callable[[Future[T]], Any]) -> Future[T]:
        if self._state is PENDING:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(cb)
        else:
            _run(cb, self)
        return self

    def on_ready(self, cb: Callable[[T], Any]) -> Future[T]:
        return self.on_any(lambda f: cb(f._value) if f._state is READY else None)

    def on_failed(self, cb: Callable[[str], Any]) -> Future[T]:
        return self.on_any(lambda f: cb(f.failure()) if f._state is FAILED else None)

    def on_discarded(self, cb: Callable[[], Any]) -> Future[T]:
        return self.on_any(lambda f: cb() if f._state is DISCARDED else None)

    def on_discard(self, cb: Callable[[], Any]) -> Future[T]:
        """Run `cb` when someone requests a discard (at once if one already was)."""
        if self._flags & _DISCARD_REQUESTED:
            _run(cb)
        elif self._state is PENDING:
            if self._discard_callbacks is None:
                self._discard_callbacks = []
            self._discard_callbacks.append(cb)
        return self

    def on_abandoned(self, cb: Callable[[], Any]) -> Future[T]:
        """Run `cb` when this future is abandoned (at once if it already is)."""
        if self._flags & _ABANDONED:
            _run(cb)
        elif self._state is PENDING:
            if self._abandoned_callbacks is None:
                self._abandoned_callbacks = []
            self._abandoned_callbacks.append(cb)
        return self

    def discard(self) -> bool:
        """Request a discard; True if this was the first request on a PENDING future."""
        if self._state is not PENDING or self._flags & _DISCARD_REQUESTED:
            return False
        self._flags |= _DISCARD_REQUESTED
        cbs, self._discard_callbacks = self._discard_callbacks, None
        for cb in cbs or ():
            _run(cb)
        return True

    # -- completion (the write side; Promise and libproc's own producers) ----------------

    def _complete(self, state: str, value: Any = None, error: BaseException | None = None) -> bool:
        if self._state is not PENDING:
            return False
        self._state = state
        self._value = error if state is FAILED else value
        cbs, self._callbacks = self._callbacks, None
        self._discard_callbacks = None
        self._abandoned_callbacks = None
        if cbs:
            for cb in cbs:
                _run(cb, self)
        return True

    def _set(self, value: Any) -> bool:
        """Promise.set: a value completes; a Future or awaitable is associated."""
        if self._state is not PENDING or self._flags & _ASSOCIATED:
            return False
        if type(value) in _PLAIN:  # the common case, without inspect's ABC check
            return self._complete(READY, value)
        if isinstance(value, Future):
            return self._associate(value)
        if inspect.isawaitable(value):
            return self._associate(as_future(value))
        return self._complete(READY, value)

    def _fail(self, error: str | BaseException) -> bool:
        if self._flags & _ASSOCIATED:
            return False
        return self._complete(FAILED, error=_as_error(error))

    def _associate(self, other: Future[Any]) -> bool:
        """Take `other`'s outcome, and its abandonment; a discard request flows to `other`."""
        if self._state is not PENDING or self._flags & _ASSOCIATED:
            return False
        self._flags |= _ASSOCIATED
        self.on_discard(other.discard)
        other.on_any(self._take)
        other.on_abandoned(self._abandon_propagated)
        return True

    def _take(self, f: Future[Any]) -> None:
        """Complete with `f`'s (final) outcome, association or not."""
        state = f._state
        if state is READY:
            self._complete(READY, f._value)
        elif state is FAILED:
            self._complete(FAILED, error=f._value)
        elif state is DISCARDED:
            self._complete(DISCARDED)

    def _abandon(self, propagating: bool = False) -> bool:
        """Mark abandoned and run the on_abandoned callbacks (an associated future only when
        the abandonment comes from the future it is associated with)."""
        flags = self._flags
        if (flags & _ABANDONED or self._state is not PENDING
                or (flags & _ASSOCIATED and not propagating)):
            return False
        self._flags = flags | _ABANDONED
        cbs, self._abandoned_callbacks = self._abandoned_callbacks, None
        for cb in cbs or ():
            _run(cb)
        return True

    def _abandon_propagated(self) -> None:
        self._abandon(True)

    # -- composition --------------------------------------------------------------------

    def then(self, fn: Callable[[T], Any]) -> Future[Any]:
        """Chain: `fn(value)` once READY; it may return a value, a Future or an awaitable.

        A FAILED or DISCARDED future skips `fn` and passes its state on; so does one that
        becomes READY after a discard was requested (the result is DISCARDED, `fn` never
        runs). Discarding the returned future requests a discard of this one; abandoning
        this one abandons the returned one.
        """
        out: Future[Any] = Future(False)

        def step(f: Future[T]) -> None:
            if f._state is READY:
                if f._flags & _DISCARD_REQUESTED:
                    out._complete(DISCARDED)
                    return
                try:
                    result = fn(f._value)
                except Exception as exc:
                    out._complete(FAILED, error=exc)
                    return
                out._set(result)
            else:
                out._take(f)

        # on_any(step), on_abandoned(out._abandon), out.on_discard(self.discard), inlined:
        # `then` is the hottest composition.
        if self._state is PENDING:
            cbs = self._callbacks
            if cbs is None:
                self._callbacks = [step]
            else:
                cbs.append(step)
            if self._flags & _ABANDONED:
                out._flags |= _ABANDONED  # nothing is registered on `out` yet
            elif self._abandoned_callbacks is None:
                self._abandoned_callbacks = [out._abandon]
            else:
                self._abandoned_callbacks.append(out._abandon)
            out._discard_callbacks = [self.discard]
        else:
            _run(step, self)
        return out

    def repair(self, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """Recover a FAILED future: `fn(self)` supplies the value (or future) instead."""
        out: Future[Any] = Future(False)

        def step(f: Future[T]) -> None:
            if f._state is FAILED:
                try:
                    out._set(fn(f))
                except Exception as exc:
                    out._complete(FAILED, error=exc)
            else:
                out._take(f)

        self.on_any(step)
        self.on_abandoned(out._abandon)
        out.on_discard(self.discard)
        return out

    def recover(self, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """Recover a FAILED, DISCARDED or abandoned future: `fn(self)` supplies the result.

        A discard request on the result flows upstream; once `fn` runs, the request is
        cleared, so the future `fn` returns is not discarded at once, while a later request
        reaches it. `fn` runs at most once; a READY future passes through.
        """
        out: Future[Any] = Future(False)
        ran = False

        def rescue() -> None:
            nonlocal ran
            if ran or out._state is not PENDING:
                return
            ran = True
            out._flags &= ~_DISCARD_REQUESTED
            try:
                out._set(fn(self))
            except Exception as exc:
                out._complete(FAILED, error=exc)

        def step(f: Future[T]) -> None:
            if f._state is READY:
                if not ran:
                    out._take(f)
            else:
                rescue()

        self.on_any(step)
        self.on_abandoned(rescue)
        out.on_discard(self.discard)
        return out

    def after(self, seconds: float, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """If still PENDING after `seconds` of Clock time, `fn(self)` supplies the result.

        `fn` typically discards this future and returns a failure. The timer is cancelled
        when this future completes first. The timer keeps the result completable, so it is
        not abandoned when this future is.
        """
        from libproc.clock import Clock

        out: Future[Any] = Future(False)
        fired = False

        def expire() -> None:
            nonlocal fired
            if self._state is not PENDING or out._state is not PENDING:
                return
            fired = True
            try:
                out._set(fn(self))
            except Exception as exc:
                out._complete(FAILED, error=exc)

        timer = Clock.timer(seconds, expire)

        def done(f: Future[T]) -> None:
            timer.cancel()
            if not fired:
                out._take(f)

        self.on_any(done)
        out.on_discard(self.discard)
        return out

    # -- asyncio interop ----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        if self._state is PENDING and not self._flags & _ABANDONED:
            target = self._target
            if (target is not None and target._busy
                    and target._handler_task is asyncio.current_task()):
                raise DeadlockError(target.pid)
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(*_: Any) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.on_any(wake)
            self.on_abandoned(wake)
            try:
                yield from waiter.__await__()
            except asyncio.CancelledError:
                self.discard()
                raise
        return self.get()

    def __str__(self) -> str:
        """libprocess's stringify: `Pending`, `Ready (with discard)`, `Failed: why`, ..."""
        suffix = " (with discard)" if self._flags & _DISCARD_REQUESTED else ""
        state = self._state
        if state is PENDING:
            return ("Abandoned" if self._flags & _ABANDONED else "Pending") + suffix
        if state is READY:
            return "Ready" + suffix
        if state is FAILED:
            return f"Failed{suffix}: {self.failure()}"
        return "Discarded" + suffix

    def __repr__(self) -> str:
        if self._state is READY:
            return f"<Future {self} {self._value!r}>"
        return f"<Future {self}>"


def _abandon_dropped(f: Future[Any]) -> None:
    """A Promise was dropped with `f` PENDING: flag `f` now, run its callbacks on the loop."""
    f._flags |= _ABANDONED
    cbs, f._abandoned_callbacks = f._abandoned_callbacks, None
    if not cbs:
        return

    def run() -> None:
        for cb in cbs:
            _run(cb)

    try:
        asyncio.get_running_loop().call_soon(run)
        return
    except RuntimeError:  # not on a running loop's thread
        pass
    loop = _context.loop
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(run)
            return
        except RuntimeError:  # closed meanwhile
            pass
    run()


class Promise(Generic[T]):
    """The write side: completes its `future` once; later calls return False.

    Dropping a Promise (it is garbage-collected) while its future is PENDING and not
    associated abandons that future.
    """

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[T] = Future(False)

    def __del__(self) -> None:
        try:
            f = self.future
            if f._state is PENDING and not f._flags & (_ASSOCIATED | _ABANDONED):
                _abandon_dropped(f)
        except Exception:  # noqa: BLE001 - __init__ did not run, or interpreter shutdown
            pass

    def set(self, value: Any) -> bool:
        """Complete with a value; a Future or awaitable is associated (its outcome is ours)."""
        return self.future._set(value)

    def associate(self, other: Future[Any]) -> bool:
        """This promise's future takes `other`'s outcome; a discard request flows to `other`."""
        return self.future._associate(other)

    def fail(self, error: str | BaseException) -> bool:
        return self.future._fail(error)

    def discard(self) -> bool:
        """Complete as DISCARDED (the producer gives up)."""
        f = self.future
        if f._flags & _ASSOCIATED:
            return False
        return f._complete(DISCARDED)


def as_future(value: Any) -> Future[Any]:
    """A Future for a Future (itself), an awaitable (run as an asyncio task), or a value."""
    if isinstance(value, Future):
        return value
    if not inspect.isawaitable(value):
        return Future.ready(value)
    task = asyncio.ensure_future(value)
    out: Future[Any] = Future(False)

    def done(t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            out._complete(DISCARDED)
        elif t.exception() is not None:
            out._fail(t.exception())  # type: ignore[arg-type]
        else:
            out._set(t.result())

    task.add_done_callback(done)
    out.on_discard(task.cancel)
    return out


AwaitableOrFuture = Awaitable[T] | Future[T]
