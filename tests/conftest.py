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
def no_slave_cgroups_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A slave killed with -9 by a test leaves its (empty) per-slave cgroups behind, as a
    real one would until it restarts: remove those of this session's slaves (named for work
    dirs under this session's temporary directory), never another run's or a real slave's."""
    from slave.isolation.cgroupfs import slave_dir_name

    yield
    base = tmp_path_factory.getbasetemp()
    ours = {slave_dir_name(str(p.parent)) for name in ("slave.json", "isolation.json")
            for p in base.rglob(name)}
    for d in sorted(_slave_cgroups(), key=len, reverse=True):
        if os.path.basename(d) in ours:
            try:
                os.rmdir(d)  # only an empty one: a cgroup with tasks or children stays
            except OSError:
                pass
