"""loop: an asynchronous loop without recursion (libprocess's loop.hpp).

    loop(iterate, body)            # iterate() -> value (or Future); body(value) -> ControlFlow
    loop(iterate, body, pid=pid)   # every step runs inside process `pid`
    loop(pid, iterate, body)       # the same, in libprocess's argument order

is, written synchronously:

    while True:
        flow = body(iterate())
        if isinstance(flow, Break):
            return flow.value

`iterate` and `body` may return plain values, Futures or awaitables; `body` returns (or its
future yields) `Continue()` or `Break(value)`. The loop's Future is READY with the Break's
value, FAILED when a step raises or yields a failed future (or `body` returns anything but a
ControlFlow), DISCARDED when a step's future is DISCARDED, and abandoned when a step's future is
abandoned. Discarding the loop's Future passes the request to the step it is blocked on (and to
each later one); a step that ignores it keeps the loop going.

With `pid`, the loop starts with a dispatch to `pid` and each step that had to wait resumes
there (`defer`), serially with the process's other events; if the process is gone the loop
FAILS (ProcessNotFoundError) or, when it terminated with the step queued, is abandoned. Without
`pid`, a step resumes wherever the future it waited on completes.

Deliberate difference: steps that complete at once run without touching the event loop, but
after every 100 such steps the loop yields one turn (libprocess spins in its worker thread;
Python has one thread, and a loop that never yielded would stop every other process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from libproc.dispatch import dispatch
from libproc.future import DISCARDED, FAILED, PENDING, READY, Future, as_future
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["loop", "ControlFlow", "Continue", "Break"]

V = TypeVar("V")

_SYNC_STEPS = 100  # steps run without yielding when each completes at once


class ControlFlow:
    """What a loop body returns: `Continue()` or `Break(value)`."""

    __slots__ = ()


class Continue(ControlFlow):
    """Go round the loop again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Continue()"


class Break(ControlFlow, Generic[V]):
    """Leave the loop; its Future becomes READY with `value`."""

    __slots__ = ("value",)

    def __init__(self, value: V = None) -> None:  # type: ignore[assignment]
        self.value = value

    def __repr__(self) -> str:
        return f"Break({self.value!r})"


class _Loop:
    __slots__ = ("pid", "iterate", "body", "out", "current")

    def __init__(self, pid: UPID | Process | str | None, iterate: Callable[[], Any],
                 body: Callable[[Any], Any]) -> None:
        self.pid = pid
        self.iterate = iterate
        self.body = body
        self.out: Future[Any] = Future(False)
        self.current: Future[Any] | None = None  # the step the loop is blocked on

    def start(self) -> Future[Any]:
        self.out.on_discard(self._discard)
        if self.pid is None:
            self._resume()
        else:
            self._in_pid(self._resume)
        return self.out

    def _discard(self) -> None:
        current = self.current
        if current is not None:
            current.discard()

    def _fail(self, exc: BaseException | None) -> None:
        self.out._complete(FAILED, error=exc)

    def _next(self) -> Future[Any] | None:
        try:
            return as_future(self.iterate())
        except Exception as exc:
            self._fail(exc)
            return None

    def _resume(self) -> None:
        if self.out._state is PENDING:
            self._run(self._next())

    def _run(self, step: Future[Any] | None) -> None:
        self.current = None
        done = 0
        while step is not None and self.out._state is PENDING:
            if step._state is not READY:
                self._wait(step, self._iterated)
                return
            try:
                flow = as_future(self.body(step._value))
            except Exception as exc:
                self._fail(exc)
                return
            if flow._state is not READY:
                self._wait(flow, self._flowed)
                return
            if not self._goes_on(flow._value):
                return
            done += 1
            if done >= _SYNC_STEPS:
                self._yield()
                return
            step = self._next()

    def _goes_on(self, flow: Any) -> bool:
        if isinstance(flow, Continue):
            return True
        if isinstance(flow, Break):
            self.out._complete(READY, flow.value)
        else:
            self._fail(TypeError(f"a loop body must return Continue() or Break(value) (or a "
                                 f"future of one); it returned {flow!r}"))
        return False

    def _wait(self, step: Future[Any], then: Callable[[Future[Any]], None]) -> None:
        self.current = step
        if self.pid is None:
            step.on_any(then)
        else:
            step.on_any(lambda f: self._in_pid(then, f))
        step.on_abandoned(self.out._abandon)
        if self.out.has_discard():
            step.discard()

    def _settled(self, f: Future[Any]) -> bool:
        """Pass a step's failure or discard on; True if it is READY."""
        if self.out._state is not PENDING:
            return False
        if f._state is READY:
            return True
        if f._state is FAILED:
            self._fail(f._value)
        elif f._state is DISCARDED:
            self.out._complete(DISCARDED)
        return False

    def _iterated(self, f: Future[Any]) -> None:
        if self._settled(f):
            self._run(f)

    def _flowed(self, f: Future[Any]) -> None:
        if self._settled(f) and self._goes_on(f._value):
            self._run(self._next())

    def _yield(self) -> None:
        if self.pid is not None:
            self._in_pid(self._resume)
            return
        try:
            asyncio.get_running_loop().call_soon(self._resume)
        except RuntimeError:  # no event loop to yield to: keep going here
            self._resume()

    def _in_pid(self, fn: Callable[..., None], *args: Any) -> None:
        assert self.pid is not None
        step = dispatch(self.pid, fn, *args)
        if step._state is FAILED:  # the process is gone
            self._fail(step._value)
        else:
            step.on_discarded(self.out._abandon)  # it terminated with this step queued


def loop(*args: Any, pid: UPID | Process | str | None = None) -> Future[Any]:
    """`loop(iterate, body, pid=None)`, or libprocess's order `loop(pid, iterate, body)` (pid
    may be None): run `body(iterate())` until it breaks; see the module docstring."""
    if len(args) == 3 and pid is None:
        pid, iterate, body = args
    elif len(args) == 2:
        iterate, body = args
    else:
        raise TypeError(f"loop() takes (iterate, body) or (pid, iterate, body); got "
                        f"{len(args)} positional argument(s)")
    if not callable(iterate) or not callable(body):
        raise TypeError("loop(): iterate and body must be callables (iterate() -> value, "
                        "body(value) -> Continue() or Break(value))")
    return _Loop(pid, iterate, body).start()
