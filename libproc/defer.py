"""defer: a callable that dispatches to a process when it is called (libprocess's defer.hpp).

    future.on_ready(defer(self.pid, Self._got))             # back onto this process
    defer(pid, Worker.add, _1, 10)(5)                      # dispatch(pid, Worker.add, 5, 10)
    defer(fn)                                              # no pid: see below

Arguments bound at `defer` time come first and the call's arguments are appended, as with
`functools.partial`. Placeholders (`_1`, `_2`, ...) put call arguments at any position
instead, as libprocess's `lambda::_1` does: once a placeholder is used, only the arguments
placeholders name are passed (a `then` value may be ignored that way).

Without a pid, `defer(fn)` made inside a process's handler defers to that process; made
outside any process it defers to the runtime's default Executor, a process of its own, so
`fn` runs later on the event loop, serially with the Executor's other calls. Call a Deferred
from the event loop's thread; it returns the dispatch's Future.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libproc import _context
from libproc.dispatch import dispatch
from libproc.future import Future
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["defer", "Deferred", "Placeholder", "_1", "_2", "_3", "_4", "_5", "_6", "_7", "_8",
           "_9"]


class Placeholder:
    """Stands for the n-th argument (from 1) of a Deferred's call, like `lambda::_1`."""

    __slots__ = ("index",)

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"placeholders count from 1 (_1), not {n}")
        self.index = n - 1

    def __repr__(self) -> str:
        return f"_{self.index + 1}"


_1, _2, _3, _4, _5, _6, _7, _8, _9 = (Placeholder(n) for n in range(1, 10))


class Deferred:
    """A call of `method` inside process `pid`, made when this object is called."""

    __slots__ = ("pid", "method", "bound", "_placeholders")

    def __init__(self, pid: UPID | Process | str, method: Callable[..., Any] | str,
                 bound: tuple[Any, ...]) -> None:
        self.pid = pid
        self.method = method
        self.bound = bound
        self._placeholders = any(isinstance(b, Placeholder) for b in bound)

    def __call__(self, *args: Any, **kwargs: Any) -> Future[Any]:
        if not self._placeholders:
            return dispatch(self.pid, self.method, *self.bound, *args, **kwargs)
        try:
            full = [args[b.index] if isinstance(b, Placeholder) else b for b in self.bound]
        except IndexError:
            wanted = max(b.index for b in self.bound if isinstance(b, Placeholder)) + 1
            raise TypeError(f"deferred {_name(self.method)} takes at least {wanted} "
                            f"argument(s) for its placeholders; it was called with "
                            f"{len(args)}") from None
        return dispatch(self.pid, self.method, *full, **kwargs)

    def __repr__(self) -> str:
        return f"<Deferred {_name(self.method)} on {self.pid}>"


def _name(method: Any) -> str:
    return str(getattr(method, "__qualname__", method))


def defer(target: UPID | Process | str | Callable[..., Any], *rest: Any) -> Deferred:
    """`defer(pid, method, *bound)` or `defer(fn, *bound)`; see the module docstring."""
    if isinstance(target, (UPID, Process, str)):
        if not rest:
            raise TypeError("defer(pid, method, *args) needs the method to call in that "
                            "process; to defer a callable without a pid write defer(fn)")
        return Deferred(target, rest[0], rest[1:])
    if not callable(target):
        raise TypeError(f"defer() takes a pid and a method, or a callable; got "
                        f"{type(target).__name__} {target!r}")
    current = _context.current_pid.get()
    if current is not None:
        return Deferred(current, target, rest)
    from libproc.executor import default_executor

    return default_executor().defer(target, *rest)
