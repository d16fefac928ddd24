"""async_: run a blocking callable on a thread pool and get a libproc Future (libprocess's
`async`).

`async_(fn, *args, **kwargs)` runs `fn(*args, **kwargs)` on the event loop's default thread
pool and returns a Future, completed on the event loop's thread: READY with what `fn`
returned (a returned Future's or awaitable's outcome is taken over), FAILED with what it
raised. Discarding it cancels the call if it has not started yet (then it is DISCARDED); a
call that has started runs to its end. `fn` runs on another thread, so it must not touch
libproc (processes, futures, the clock): hand results back through the returned Future.

    digest = await libproc.async_(hashlib.sha256, big_bytes)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from libproc.future import Future, as_future

__all__ = ["async_"]


def async_(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """Run `fn(*args, **kwargs)` on a worker thread; see the module docstring."""
    loop = asyncio.get_running_loop()
    return as_future(loop.run_in_executor(None, functools.partial(fn, *args, **kwargs)))
