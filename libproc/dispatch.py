"""dispatch and defer: run a method inside a local process, in its mailbox order."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from libproc import runtime
from libproc.errors import ProcessNotFoundError
from libproc.future import Future, Promise
from libproc.pid import UPID
from libproc.process import DISPATCH, Process

__all__ = ["dispatch", "defer"]


def _bind(proc: Process, method: Callable[..., Any] | str) -> Callable[..., Any]:
    if isinstance(method, str):
        fn = getattr(proc, method, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"process {proc.id!r} ({type(proc).__name__}) has no method "
                                 f"{method!r}")
        return fn  # type: ignore[no-any-return]
    if inspect.isfunction(method) and getattr(type(proc), method.__name__, None) is method:
        return method.__get__(proc)  # type: ignore[no-any-return]  # Class.method -> bound
    return method


def dispatch(pid: UPID | Process | str, method: Callable[..., Any] | str, *args: Any,
             **kwargs: Any) -> Future[Any]:
    """Run `method(*args)` inside process `pid` once its earlier events are done.

    `method` is a bound method, a function of the process's class (`Slave.launch`), a
    method name, or any callable. The Future is READY with its result (a coroutine's result
    or a returned Future's outcome), FAILED with what it raised, FAILED with
    ProcessNotFoundError when `pid` is not a live local process, and DISCARDED if the process
    terminates before running it. Call it from the event loop's thread.
    """
    proc = runtime.lookup(pid)
    if proc is None or proc._state in ("terminating", "terminated"):
        return Future.failed(ProcessNotFoundError(pid))
    promise: Promise[Any] = Promise()
    try:
        fn = _bind(proc, method)
    except AttributeError as exc:
        return Future.failed(exc)
    promise.future._target = proc
    proc._enqueue((DISPATCH, fn, args, kwargs, promise))
    return promise.future


def defer(pid: UPID | Process | str, method: Callable[..., Any] | str,
          *bound: Any) -> Callable[..., Future[Any]]:
    """A callable that, when called with more arguments, dispatches `method` to `pid`.

    Use it to come back onto a process from a callback:
    `future.on_ready(defer(self.pid, self._got))`.
    """

    def deferred(*args: Any, **kwargs: Any) -> Future[Any]:
        return dispatch(pid, method, *bound, *args, **kwargs)

    return deferred
