"""The AWAIT_* checks of libprocess's gtest.hpp: wait (bounded, generously) for a future.

libprocess waits up to 15 s of real time for a future to leave PENDING; so do these. They
never pass on a timeout: a future that is still PENDING then fails the test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from libproc import Future

AWAIT_TIMEOUT = 15.0


async def settled(future: Future[Any], timeout: float = AWAIT_TIMEOUT) -> Future[Any]:
    """Wait until `future` is no longer PENDING (or is abandoned); returns it."""
    if future.is_pending() and not future.is_abandoned():
        waiter = asyncio.get_running_loop().create_future()

        def wake(*_: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)

        future.on_any(wake)
        future.on_abandoned(wake)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise AssertionError(f"still {future} after {timeout:g} s") from None
    return future


async def await_ready(future: Future[Any]) -> Any:
    """AWAIT_READY: the future becomes READY; returns its value."""
    f = await settled(future)
    assert f.is_ready(), f"expected Ready, got {f}"
    return f.get()


async def await_failed(future: Future[Any]) -> str:
    """AWAIT_FAILED: the future FAILS; returns the failure message."""
    f = await settled(future)
    assert f.is_failed(), f"expected Failed, got {f}"
    return f.failure()


async def await_discarded(future: Future[Any]) -> None:
    """AWAIT_DISCARDED: the future becomes DISCARDED."""
    f = await settled(future)
    assert f.is_discarded(), f"expected Discarded, got {f}"


async def await_abandoned(future: Future[Any]) -> None:
    """AWAIT_EXPECT_ABANDONED: the future is abandoned (and still PENDING)."""
    f = await settled(future)
    assert f.is_pending() and f.is_abandoned(), f"expected Abandoned, got {f}"
