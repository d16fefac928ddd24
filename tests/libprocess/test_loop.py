"""libprocess's loop_tests.cpp (LoopTest.*) against libproc's `loop`.

Every case has a meaning in Python and is ported. LoopTest.Async reads from libprocess's
`Queue`; an asyncio.Queue stands in (an asyncio awaitable is usable as a future).
"""

from __future__ import annotations

import asyncio
from typing import Any

from libproc import Break, Continue, Promise, loop
from libprocess.support import await_discarded, await_ready


# LoopTest.Sync
async def test_a_loop_of_immediate_steps_lets_other_work_run() -> None:
    value = [1]
    future = loop(lambda: value[0], lambda i: Continue() if i != 0 else Break())
    assert future.is_pending()
    value[0] = 0  # other code runs while the loop goes round
    await await_ready(future)


# LoopTest.Async
async def test_a_loop_waits_on_the_futures_of_its_steps() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    promise1: Promise[int] = Promise()
    promise2: Promise[str] = Promise()

    def body(i: int) -> Any:
        promise1.set(i)
        return promise2.future.then(lambda s: Break(s))

    future = loop(queue.get, body)
    assert future.is_pending()
    queue.put_nowait(1)
    assert await await_ready(promise1.future) == 1
    assert future.is_pending()
    promise2.set("Hello world!")
    assert await await_ready(future) == "Hello world!"


def _discarding_promise() -> Promise[Any]:
    promise: Promise[Any] = Promise()
    promise.future.on_discard(promise.discard)
    return promise


# LoopTest.DiscardIterate
async def test_discarding_a_loop_discards_the_iterate_step_it_waits_on() -> None:
    promise = _discarding_promise()
    future = loop(lambda: promise.future, lambda _: Break())
    assert future.is_pending()
    future.discard()
    await await_discarded(future)
    assert promise.future.has_discard()


# LoopTest.DiscardBody
async def test_discarding_a_loop_discards_the_body_step_it_waits_on() -> None:
    promise = _discarding_promise()
    future = loop(lambda: 42, lambda _: promise.future.then(lambda _: Break()))
    assert future.is_pending()
    future.discard()
    await await_discarded(future)
    assert promise.future.has_discard()
