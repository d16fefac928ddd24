"""libprocess's after_tests.cpp (AfterTest.*) against libproc's `after` and `loop`.

Both cases have a meaning in Python and are ported.
"""

from __future__ import annotations

from typing import Any

from libproc import Break, Clock, Continue, Promise, after, loop
from libprocess.support import await_discarded, await_ready

DAY = 86400.0


# AfterTest.After
async def test_after_is_ready_once_its_time_has_passed_and_can_be_discarded() -> None:
    await await_ready(after(0.001))  # the real clock

    Clock.pause()
    future = after(DAY)
    assert future.is_pending()
    Clock.advance(DAY)
    await await_ready(future)

    future = after(DAY)
    assert future.is_pending()
    future.discard()
    await await_discarded(future)
    Clock.resume()


# AfterTest.Loop
async def test_a_waiting_loop_stops_when_discarded() -> None:
    future = loop(lambda: after(DAY), lambda _: Continue())
    assert future.is_pending()
    future.discard()
    await await_discarded(future)

    promise1: Promise[None] = Promise()
    promise2: Promise[Any] = Promise()

    def body(_: None) -> Any:
        promise1.set(None)
        return promise2.future

    future = loop(lambda: after(0.001), body)
    assert future.is_pending()
    await await_ready(promise1.future)
    # The body's future answers a discard by breaking out of the loop.
    promise2.future.on_discard(lambda: promise2.set(Break()))
    future.discard()
    await await_ready(future)
