"""`until` and `within`: the bounded waits of the in-process tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from libproc import Clock


async def until(cond: Callable[[], object], timeout: float = 10.0, *,
                interval: float = 0.005) -> None:
    """Let actors (idle first), threads and subprocesses work until `cond()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout:g} s")
        await Clock.settle()
        await asyncio.sleep(interval)


async def within(aw: Any, timeout: float = 10.0) -> Any:
    """Await a libproc Future (or any awaitable) for at most `timeout` seconds."""

    async def run() -> Any:
        return await aw

    return await asyncio.wait_for(run(), timeout)
