"""Fixtures shared by the test modules."""

from __future__ import annotations

import glob
import os
from collections.abc import AsyncIterator, Iterator

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


_SLAVE_CGROUPS = ("/sys/fs/cgroup/*/cluster-slave-*", "/sys/fs/cgroup/*/*/*/cluster-slave-*",
                  "/sys/fs/cgroup/unified/cluster-slave-*", "/sys/fs/cgroup/cluster-slave-*")


def _slave_cgroups() -> set[str]:
    return {d for pattern in _SLAVE_CGROUPS for d in glob.glob(pattern)}


@pytest.fixture(scope="session", autouse=True)
def no_slave_cgroups_left() -> Iterator[None]:
    """A slave killed with -9 by a test leaves its (empty) per-slave cgroups behind, as a
    real one would until it restarts: remove those that this session created and emptied."""
    before = _slave_cgroups()
    yield
    for d in sorted(_slave_cgroups() - before, key=len, reverse=True):
        try:
            os.rmdir(d)  # only an empty one: a cgroup with tasks or children stays
        except OSError:
            pass
