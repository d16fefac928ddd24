"""delay: dispatch a method to a process after some Clock time.

As in libprocess's delay.hpp: the returned Timer can be cancelled, but a cancelled timer may
already have fired; `Timer.cancel()` returns False then. The dispatch is dropped (its future
FAILED) if the process is gone when the timer fires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from libproc.clock import Clock, Timer
from libproc.dispatch import dispatch
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["delay"]

log = logging.getLogger("libproc.delay")


def delay(seconds: float, pid: UPID | Process | str, method: Callable[..., Any] | str,
          *args: Any, **kwargs: Any) -> Timer:
    def fire() -> None:
        # Nobody holds this dispatch's future: log a failure, or it would vanish silently.
        dispatch(pid, method, *args, **kwargs).on_failed(
            lambda message: log.error("delayed call %s on %s failed: %s",
                                      getattr(method, "__name__", method), pid, message))

    return Clock.timer(seconds, fire)
