"""dispatch: run a method inside a local process, in its mailbox order.

A method named by its class (`dispatch(pid, Base.func)`) runs the process's own
implementation, as a virtual call does in libprocess: a subclass's override, or the class that
implements a mixin's method (`dispatch(pid, Listener.event)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import FunctionType
from typing import Any

from libproc import _context
from libproc import process as _process
from libproc.errors import ProcessNotFoundError
from libproc.future import Future
from libproc.pid import UPID
from libproc.process import Dispatch, Process

__all__ = ["dispatch", "resolve_method"]

# (class, function) -> the attribute name under which `class` implements that function (a
# method of the class or of one of its bases, maybe overridden), or None for a function that
# is not a method of the class. Bounded: cleared when full.
_VIRTUAL: dict[tuple[type, Callable[..., Any]], str | None] = {}
_VIRTUAL_MAX = 4096


def _method_name(cls: type, fn: Callable[..., Any]) -> str | None:
    key = (cls, fn)
    try:
        return _VIRTUAL[key]
    except KeyError:
        pass
    found: str | None = None
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if value is fn:
                found = name
                break
        if found is not None:
            break
    if len(_VIRTUAL) >= _VIRTUAL_MAX:
        _VIRTUAL.clear()
    _VIRTUAL[key] = found
    return found


def _resolve(proc: Process, method: Callable[..., Any] | str) -> tuple[Callable[..., Any], bool]:
    """(callable, is_method): what `dispatch(proc, method)` calls, as `callable(proc, *args)`
    when is_method, else `callable(*args)`. Raises AttributeError for a method name the
    process does not have."""
    if type(method) is FunctionType:
        cls = type(proc)
        if getattr(cls, method.__name__, None) is method:  # the common case: no override
            return method, True
        name = _method_name(cls, method)
        if name is not None:
            return getattr(proc, name), False  # the override, bound
        return method, False
    if isinstance(method, str):
        fn = getattr(proc, method, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"process {proc.id!r} ({type(proc).__name__}) has no method "
                                 f"{method!r}")
        return fn, False
    if inspect.isfunction(method):  # a subclass of function (rare)
        name = _method_name(type(proc), method)
        if name is not None:
            return getattr(proc, name), False
    return method, False


def resolve_method(proc: Process, method: Callable[..., Any] | str) -> Callable[..., Any]:
    """The callable that `dispatch(proc, method)` runs (bound to `proc` for a method).

    Raises AttributeError for a method name the process does not have.
    """
    fn, is_method = _resolve(proc, method)
    return fn.__get__(proc) if is_method else fn


_GONE = ("terminating", "terminated")


def dispatch(pid: UPID | Process | str, method: Callable[..., Any] | str, *args: Any,
             **kwargs: Any) -> Future[Any]:
    """Run `method(*args)` inside process `pid` once its earlier events are done.

    `method` is a bound method, a function of the process's class or of a base or mixin
    (`Slave.launch`; the process's own override runs), a method name, or any callable. The
    Future is READY with its result (a coroutine's result or a returned Future's outcome),
    FAILED with what it raised, FAILED with ProcessNotFoundError when `pid` is not a live
    local process, and DISCARDED if the process terminates before running it. Call it from
    the event loop's thread.
    """
    rt = _context.runtime
    if rt is None:
        return Future.failed(ProcessNotFoundError(pid))
    if type(pid) is UPID:  # Runtime.lookup, short-cut for a process's own UPID object
        proc = rt.processes.get(pid.id)
        if proc is not None and proc._pid is not pid:
            proc = rt.lookup(pid)  # an equal UPID, or one of another address
    else:
        proc = rt.lookup(pid)
    if proc is None or proc._state in _GONE:
        return Future.failed(ProcessNotFoundError(pid))
    if type(method) is FunctionType and getattr(type(proc), method.__name__, None) is method:
        call = Dispatch(proc, method, args, kwargs or None, True)  # _resolve's common case
    else:
        try:
            fn, is_method = _resolve(proc, method)
        except AttributeError as exc:
            return Future.failed(exc)
        call = Dispatch(proc, fn, args, kwargs or None, is_method)
    if _process._filter is not None:
        proc._enqueue(call)
        return call
    proc._mailbox.append(call)  # Process._enqueue, inlined: this is the hot path
    if not proc._scheduled and not proc._busy:
        proc._schedule_run()
    return call
