"""Executor: run callables one at a time, later, in a process of their own.

libprocess's Executor: `execute(fn)` dispatches `fn` to the Executor's process and returns
its Future (READY with what `fn` returned; a returned Future's outcome), `defer(fn)` returns a
Deferred that does so when called. Calls run on the event loop, serially, in the order they
were made; `fn` must not block (use `async_` for blocking work). `stop()` terminates the
process: calls not yet run are DISCARDED and later ones FAIL with ProcessNotFoundError.

    executor = Executor()                     # needs a running libproc runtime
    value = await executor.execute(lambda: 6 * 7)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libproc import _context, runtime
from libproc.defer import Deferred
from libproc.dispatch import dispatch
from libproc.errors import NotRunningError
from libproc.future import Future
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["Executor", "default_executor"]


class Executor:
    """Runs callables serially in its own process (id `__executor__(N)`)."""

    def __init__(self) -> None:
        self._process = Process(prefix="__executor__")
        runtime.spawn(self._process)

    @property
    def pid(self) -> UPID:
        return self._process.pid

    def running(self) -> bool:
        return self._process.state not in ("terminating", "terminated")

    def defer(self, fn: Callable[..., Any], *bound: Any) -> Deferred:
        """A callable that runs `fn(*bound, *args)` in this Executor when called."""
        return Deferred(self._process.pid, fn, bound)

    def execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Run `fn(*args, **kwargs)` in this Executor; its Future."""
        return dispatch(self._process.pid, fn, *args, **kwargs)

    def stop(self) -> None:
        """Terminate the Executor's process (without waiting for it)."""
        runtime.terminate(self._process.pid)


def default_executor() -> Executor:
    """The runtime's shared Executor (what `defer(fn)` outside any process uses)."""
    rt = _context.runtime
    if rt is None:
        raise NotRunningError("defer a callable outside any process")
    executor: Executor | None = rt.executor
    if executor is None or not executor.running():
        executor = Executor()
        rt.executor = executor
    return executor
