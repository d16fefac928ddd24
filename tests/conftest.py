"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import libproc
from libproc import UPID, Clock


@pytest.fixture
async def runtime() -> AsyncIterator[UPID]:
    """A libproc runtime listening on 127.0.0.1 (any free port), with a fresh Clock."""
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0)
    try:
        yield address
    finally:
        await libproc.stop()
        Clock.reset()
