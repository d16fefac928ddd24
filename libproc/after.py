"""after: a future that becomes READY after some Clock time (libprocess's after.hpp).

`after(seconds)` is READY with None once `seconds` of libproc Clock time have passed (at once
under a paused clock advanced that far). Discarding it cancels the timer and makes it
DISCARDED, unless the timer already fired (then it is, or is about to be, READY). It is the
step of a "waiting loop":

    loop(lambda: after(1.0), lambda _: Break() if done() else Continue())
"""

from __future__ import annotations

from libproc.clock import Clock
from libproc.future import DISCARDED, READY, Future

__all__ = ["after"]


def after(seconds: float) -> Future[None]:
    """READY with None after `seconds` of Clock time; see the module docstring."""
    out: Future[None] = Future(False)
    timer = Clock.timer(seconds, lambda: out._complete(READY, None))

    def discard() -> None:
        if timer.cancel():
            out._complete(DISCARDED)

    out.on_discard(discard)
    return out
