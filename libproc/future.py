"""Future/Promise: libprocess's composable results, usable from asyncio too.

A Future is PENDING, then exactly one of READY (a value), FAILED (a message, and the exception
when one caused it) or DISCARDED (its producer gave up). Callbacks run synchronously, in the
order they were added, on whatever code completes the future; one added to a completed future
runs at once. `discard()` on a future only *requests* a discard: whoever holds the Promise sees
it through `on_discard` and decides (`then` passes the request upstream).

A Future is awaitable (`value = await future`): a FAILED future raises the exception that failed
it (or FutureFailedError), a DISCARDED one raises FutureDiscardedError, and cancelling the
awaiting task requests a discard. Anything awaitable becomes a Future with `as_future()`.

    >>> p = Promise[int]()
    >>> doubled = p.future.then(lambda v: v * 2)
    >>> p.set(21)
    True
    >>> doubled.get()
    42
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Generic, TypeVar

from libproc.errors import (
    DeadlockError,
    FutureDiscardedError,
    FutureError,
    FutureFailedError,
    FuturePendingError,
)

__all__ = ["Future", "Promise", "as_future", "collect", "await_", "PENDING", "READY", "FAILED",
           "DISCARDED"]

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


class Future(Generic[T]):
    """The read side of a result; see the module docstring for the contract."""

    __slots__ = ("_state", "_value", "_error", "_callbacks", "_discard_requested",
                 "_discard_callbacks", "_target", "__weakref__")

    def __init__(self) -> None:
        self._state = PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], Any]] | None = None
        self._discard_requested = False
        self._discard_callbacks: list[Callable[[], Any]] | None = None
        # The Process that will complete this future (set by dispatch), used to refuse an
        # await from inside that process's own running handler, which would deadlock.
        self._target: Any = None

    # -- construction -------------------------------------------------------------------

    @staticmethod
    def ready(value: U) -> Future[U]:
        f: Future[U] = Future()
        f._state, f._value = READY, value
        return f

    @staticmethod
    def failed(error: str | BaseException) -> Future[Any]:
        f: Future[Any] = Future()
        f._state = FAILED
        f._error = error if isinstance(error, BaseException) else FutureFailedError(error)
        return f

    @staticmethod
    def discarded() -> Future[Any]:
        f: Future[Any] = Future()
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

    def has_discard(self) -> bool:
        """True once someone asked to discard this future."""
        return self._discard_requested

    def get(self) -> T:
        """The value of a READY future; raises for any other state."""
        if self._state is READY:
            return self._value  # type: ignore[no-any-return]
        if self._state is FAILED:
            assert self._error is not None
            raise self._error
        if self._state is DISCARDED:
            raise FutureDiscardedError()
        raise FuturePendingError("get() on a PENDING future; await it or add a callback")

    def failure(self) -> str:
        """The failure message of a FAILED future."""
        if self._state is not FAILED:
            raise FutureError(f"failure() on a {self._state} future")
        return str(self._error) or type(self._error).__name__

    @property
    def exception(self) -> BaseException | None:
        return self._error

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
        if self._discard_requested:
            _run(cb)
        elif self._state is PENDING:
            if self._discard_callbacks is None:
                self._discard_callbacks = []
            self._discard_callbacks.append(cb)
        return self

    def discard(self) -> bool:
        """Request a discard; True if this was the first request on a PENDING future."""
        if self._state is not PENDING or self._discard_requested:
            return False
        self._discard_requested = True
        cbs, self._discard_callbacks = self._discard_callbacks, None
        for cb in cbs or ():
            _run(cb)
        return True

    # -- composition --------------------------------------------------------------------

    def then(self, fn: Callable[[T], Any]) -> Future[Any]:
        """Chain: `fn(value)` once READY; it may return a value, a Future or an awaitable.

        A FAILED or DISCARDED future skips `fn` and passes its state on; discarding the
        returned future requests a discard of this one.
        """
        promise: Promise[Any] = Promise()
        promise.future.on_discard(self.discard)

        def step(f: Future[T]) -> None:
            if f._state is READY:
                try:
                    result = fn(f._value)
                except Exception as exc:
                    promise.fail(exc)
                    return
                promise.set(result)
            else:
                promise._mirror(f)

        self.on_any(step)
        return promise.future

    def repair(self, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """Recover a FAILED future: `fn(self)` supplies the value (or future) instead."""
        promise: Promise[Any] = Promise()
        promise.future.on_discard(self.discard)

        def step(f: Future[T]) -> None:
            if f._state is FAILED:
                try:
                    promise.set(fn(f))
                except Exception as exc:
                    promise.fail(exc)
            else:
                promise._mirror(f)

        self.on_any(step)
        return promise.future

    def after(self, seconds: float, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """If still PENDING after `seconds` of Clock time, `fn(self)` supplies the result.

        `fn` typically discards this future and returns a failure. The timer is cancelled
        when this future completes first.
        """
        from libproc.clock import Clock

        promise: Promise[Any] = Promise()
        promise.future.on_discard(self.discard)
        fired = False

        def expire() -> None:
            nonlocal fired
            if self._state is not PENDING or promise.future._state is not PENDING:
                return
            fired = True
            try:
                promise.set(fn(self))
            except Exception as exc:
                promise.fail(exc)

        timer = Clock.timer(seconds, expire)

        def done(f: Future[T]) -> None:
            timer.cancel()
            if not fired:
                promise._mirror(f)

        self.on_any(done)
        return promise.future

    # -- asyncio interop ----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        if self._state is PENDING:
            target = self._target
            if (target is not None and target._busy
                    and target._handler_task is asyncio.current_task()):
                raise DeadlockError(target.pid)
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: Future[T]) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.on_any(wake)
            try:
                yield from waiter.__await__()
            except asyncio.CancelledError:
                self.discard()
                raise
        return self.get()

    def __repr__(self) -> str:
        if self._state is READY:
            return f"<Future READY {self._value!r}>"
        if self._state is FAILED:
            return f"<Future FAILED {self.failure()!r}>"
        return f"<Future {self._state}>"


class Promise(Generic[T]):
    """The write side: completes its `future` once; later calls return False."""

    __slots__ = ("future", "_associated")

    def __init__(self) -> None:
        self.future: Future[T] = Future()
        self._associated = False

    def _complete(self, state: str, value: Any = None, error: BaseException | None = None) -> bool:
        f = self.future
        if f._state is not PENDING:
            return False
        f._state, f._value, f._error = state, value, error
        cbs, f._callbacks = f._callbacks, None
        f._discard_callbacks = None
        if cbs:
            for cb in cbs:
                _run(cb, f)
        return True

    def set(self, value: Any) -> bool:
        """Complete with a value; a Future or awaitable is associated (its outcome is ours)."""
        if self.future._state is not PENDING or self._associated:
            return False
        if isinstance(value, Future):
            return self.associate(value)
        if inspect.isawaitable(value):
            return self.associate(as_future(value))
        return self._complete(READY, value)

    def associate(self, other: Future[Any]) -> bool:
        """This promise's future takes `other`'s outcome; a discard request flows to `other`."""
        if self.future._state is not PENDING or self._associated:
            return False
        self._associated = True
        self.future.on_discard(other.discard)
        other.on_any(self._mirror_forced)
        return True

    def _mirror_forced(self, f: Future[Any]) -> None:
        self._associated = False
        self._mirror(f)

    def _mirror(self, f: Future[Any]) -> bool:
        if self._associated:
            return False
        if f._state is READY:
            return self._complete(READY, f._value)
        if f._state is FAILED:
            return self._complete(FAILED, error=f._error)
        if f._state is DISCARDED:
            return self._complete(DISCARDED)
        return False

    def fail(self, error: str | BaseException) -> bool:
        if self._associated:
            return False
        exc = error if isinstance(error, BaseException) else FutureFailedError(error)
        return self._complete(FAILED, error=exc)

    def discard(self) -> bool:
        """Complete as DISCARDED (the producer gives up)."""
        if self._associated:
            return False
        return self._complete(DISCARDED)


def as_future(value: Any) -> Future[Any]:
    """A Future for a Future (itself), an awaitable (run as an asyncio task), or a value."""
    if isinstance(value, Future):
        return value
    if not inspect.isawaitable(value):
        return Future.ready(value)
    task = asyncio.ensure_future(value)
    promise: Promise[Any] = Promise()

    def done(t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            promise.discard()
        elif t.exception() is not None:
            promise.fail(t.exception())  # type: ignore[arg-type]
        else:
            promise.set(t.result())

    task.add_done_callback(done)
    promise.future.on_discard(task.cancel)
    return promise.future


def _flatten(futures: tuple[Any, ...]) -> list[Future[Any]]:
    only = futures[0] if len(futures) == 1 else None
    if only is not None and not isinstance(only, Future) and isinstance(only, Iterable):
        return [as_future(f) for f in only]
    return [as_future(f) for f in futures]


def collect(*futures: Any) -> Future[list[Any]]:
    """READY with every value (in order) once all are READY; FAILED as soon as one fails or
    is discarded. Discarding the result requests a discard of every input."""
    items = _flatten(futures)
    promise: Promise[list[Any]] = Promise()
    if not items:
        promise.set([])
        return promise.future
    remaining = [len(items)]

    def step(f: Future[Any]) -> None:
        if promise.future._state is not PENDING:
            return
        if f._state is FAILED:
            promise.fail(f._error or FutureFailedError("collect failed"))
        elif f._state is DISCARDED:
            promise.fail(FutureFailedError("collect failed: a future was discarded"))
        else:
            remaining[0] -= 1
            if remaining[0] == 0:
                promise.set([i._value for i in items])

    promise.future.on_discard(lambda: [i.discard() for i in items])
    for item in items:
        item.on_any(step)
    return promise.future


def await_(*futures: Any) -> Future[list[Future[Any]]]:
    """READY with the futures themselves once every one has completed, whatever its state."""
    items = _flatten(futures)
    promise: Promise[list[Future[Any]]] = Promise()
    remaining = [len(items)]
    if not items:
        promise.set([])
        return promise.future

    def step(_: Future[Any]) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            promise.set(items)

    promise.future.on_discard(lambda: [i.discard() for i in items])
    for item in items:
        item.on_any(step)
    return promise.future


AwaitableOrFuture = Awaitable[T] | Future[T]
