"""`until`: the one bounded wait of the in-process tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
