"""Futures made of other futures: collect, await_, select, undiscardable (libprocess's
collect.hpp and the helpers at the end of future.hpp).

- `collect(a, b, ...)` is READY with every value once all are READY, FAILED as soon as one
  fails or is discarded.
- `await_(a, b, ...)` is READY with the futures themselves once every one has completed,
  whatever its state. With exactly one future (not in a list) it is READY with that future,
  as libprocess's `await(future)`: use it to break out of a chain whose inner future may
  never honour a discard.
- Both: discarding the result asks every input to discard, then the result is DISCARDED at
  once (even if an input ignores the request); an abandoned input abandons the result.
- `select(futures)` is READY with the first input that becomes READY (failed and discarded
  inputs are ignored); discarding it makes it DISCARDED; it is abandoned when no input can
  become READY any more.
- `undiscardable(future)` follows `future` but never passes a discard request to it;
  `undiscardable(fn)` wraps a callable so the future it returns is undiscardable.

Inputs may be Futures or asyncio awaitables (see `as_future`), given one by one or as one
iterable. Call these on the event loop's thread.

    >>> from libproc import Future, Promise, collect
    >>> p = Promise()
    >>> both = collect(Future.ready(1), p.future)
    >>> p.set(2)
    True
    >>> both.get()
    [1, 2]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from libproc.errors import FutureFailedError
from libproc.future import DISCARDED, FAILED, PENDING, READY, Future, as_future

__all__ = ["collect", "await_", "select", "undiscardable"]

T = TypeVar("T")


def _flatten(futures: tuple[Any, ...]) -> list[Future[Any]]:
    only = futures[0] if len(futures) == 1 else None
    if only is not None and not isinstance(only, Future) and isinstance(only, Iterable):
        return [as_future(f) for f in only]
    return [as_future(f) for f in futures]


def _watch(items: list[Future[Any]], out: Future[Any], step: Callable[[Future[Any]], None]
           ) -> None:
    """Wire the common parts of collect and await_: discard and abandonment."""
    stopped = False

    def guarded(f: Future[Any]) -> None:
        if not stopped and out._state is PENDING:
            step(f)

    def discarded() -> None:
        nonlocal stopped
        stopped = True  # inputs discarded now must not complete `out` some other way
        for item in items:
            item.discard()
        out._complete(DISCARDED)

    def abandoned() -> None:
        nonlocal stopped
        stopped = True  # libprocess terminates its collect process: nothing completes `out`
        out._abandon()

    out.on_discard(discarded)
    for item in items:
        item.on_any(guarded)
        item.on_abandoned(abandoned)


def collect(*futures: Any) -> Future[list[Any]]:
    """READY with every value (in order) once all are READY; see the module docstring."""
    items = _flatten(futures)
    if not items:
        return Future.ready([])
    out: Future[list[Any]] = Future(False)
    remaining = len(items)

    def step(f: Future[Any]) -> None:
        nonlocal remaining
        if f._state is FAILED:
            out._complete(FAILED, error=f.exception or FutureFailedError("collect failed"))
        elif f._state is DISCARDED:
            out._complete(FAILED, error=FutureFailedError("collect failed: a future was "
                                                          "discarded"))
        else:
            remaining -= 1
            if remaining == 0:
                out._complete(READY, [i._value for i in items])

    _watch(items, out, step)
    return out


def await_(*futures: Any) -> Future[Any]:
    """READY with the futures themselves once every one has completed; see the module
    docstring (one future alone: READY with that future)."""
    single = len(futures) == 1 and isinstance(futures[0], Future)
    items = _flatten(futures)
    if not items:
        return Future.ready([])
    out: Future[Any] = Future(False)
    remaining = len(items)

    def step(_: Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            out._complete(READY, items[0] if single else items)

    _watch(items, out, step)
    return out


def select(futures: Iterable[Any]) -> Future[Future[Any]]:
    """READY with the first of `futures` to become READY; see the module docstring."""
    items = [as_future(f) for f in futures]
    out: Future[Future[Any]] = Future(False)
    out.on_discard(lambda: out._complete(DISCARDED))
    hopeless: set[int] = set()  # inputs that failed, were discarded or were abandoned

    def gave_up(index: int) -> None:
        hopeless.add(index)
        if len(hopeless) == len(items):
            out._abandon()

    def watch(index: int, item: Future[Any]) -> None:
        item.on_any(lambda f: out._complete(READY, f) if f._state is READY else gave_up(index))
        item.on_abandoned(lambda: gave_up(index))

    if not items:
        out._abandon()
    for index, item in enumerate(items):
        watch(index, item)  # READY: the future itself is the value, not its value
    return out


def undiscardable(value: Any) -> Any:
    """`undiscardable(future)`: a future with `future`'s outcome that never passes a discard
    request on to it. `undiscardable(fn)`: a callable returning `undiscardable(fn(...))`,
    for `then(undiscardable(fn))`."""
    if isinstance(value, Future) or not callable(value):
        source = as_future(value)
        out: Future[Any] = Future(False)
        source.on_any(out._take)
        source.on_abandoned(out._abandon)
        return out
    fn: Callable[..., Any] = value

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Future[Any]:
        return undiscardable(as_future(fn(*args, **kwargs)))  # type: ignore[no-any-return]

    return wrapper
