"""libprocess's process_tests.cpp, ProcessRemoteLinkTest.*: links to a process in another OS
process (tests/libprocess/linkee.py, the port of libprocess's test-linkee), killed with
SIGKILL, relinked, unreachable for want of file descriptors, or half-closed behind libproc's
back.

Every case has a meaning in Python and is ported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libproc import UPID, Clock, Process, Promise, dispatch, spawn, terminate, testing, wait
from libprocess.support import await_ready
from waiting import until

pytestmark = pytest.mark.timeout(60)

LINKEE = Path(__file__).parent / "linkee.py"
ROOT = Path(__file__).resolve().parent.parent.parent


class Linkee:
    """A running linkee.py and the UPID it announced."""

    def __init__(self, proc: subprocess.Popen[bytes], pid: UPID) -> None:
        self.proc = proc
        self.pid = pid

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)


class Coordinator(Process):
    def __init__(self) -> None:
        super().__init__(prefix="coordinator")
        self.ready: Promise[UPID] = Promise()
        self.install("ready", lambda sender, body: self.ready.set(sender))


@pytest.fixture
async def linkee(runtime: UPID) -> AsyncIterator[Linkee]:
    """ProcessRemoteLinkTest's SetUp: start test-linkee, learn its UPID from its message."""
    coordinator = Coordinator()
    spawn(coordinator)
    proc = subprocess.Popen([sys.executable, str(LINKEE), str(coordinator.pid)],
                            stdin=subprocess.PIPE, cwd=ROOT)
    try:
        pid = await await_ready(coordinator.ready.future)
        terminate(coordinator)
        await await_ready(wait(coordinator))
        child = Linkee(proc, pid)
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.stdin is not None:
            proc.stdin.close()


class ExitedProcess(Process):
    """Links to `pid` in initialize(); records its exited() calls."""

    def __init__(self, pid: UPID) -> None:
        super().__init__(prefix="exited")
        self.linkee = pid
        self.exits: list[UPID] = []
        self.exited_pid: Promise[UPID] = Promise()

    def initialize(self) -> None:
        self.link(self.linkee)

    def exited(self, pid: UPID) -> None:
        self.exits.append(pid)
        self.exited_pid.set(pid)


class RemoteLinkTestProcess(ExitedProcess):
    """Links only when told to (linkup / relink), and can ping the linkee."""

    def initialize(self) -> None:
        pass

    def linkup(self) -> None:
        self.link(self.linkee)

    def relink(self) -> None:
        self.link(self.linkee, relink=True)

    def ping_linkee(self) -> None:
        self.send(self.linkee, "whatever")


async def _exactly_one_exit(process: ExitedProcess, pid: UPID) -> None:
    assert await await_ready(process.exited_pid.future) == pid
    await asyncio.sleep(0.2)  # a second notice, were there one, would have come by now
    await Clock.settle()
    assert process.exits == [pid]
    terminate(process)
    await await_ready(wait(process))


# ProcessRemoteLinkTest.RemoteLink
async def test_a_remote_link_reports_the_killed_linkee(linkee: Linkee) -> None:
    process = ExitedProcess(linkee.pid)
    spawn(process)
    await until(lambda: testing.persistent_socket(linkee.pid) is not None)
    linkee.kill()
    await _exactly_one_exit(process, linkee.pid)


# ProcessRemoteLinkTest.RemoteRelink
async def test_relink_without_a_link_links(linkee: Linkee) -> None:
    process = RemoteLinkTestProcess(linkee.pid)
    spawn(process)
    await await_ready(dispatch(process, RemoteLinkTestProcess.relink))
    await until(lambda: testing.persistent_socket(linkee.pid) is not None)
    linkee.kill()
    await _exactly_one_exit(process, linkee.pid)


# ProcessRemoteLinkTest.RemoteLinkRelink
async def test_link_then_relink_still_reports_the_linkee(linkee: Linkee) -> None:
    process = RemoteLinkTestProcess(linkee.pid)
    spawn(process)
    await await_ready(dispatch(process, RemoteLinkTestProcess.linkup))
    await await_ready(dispatch(process, RemoteLinkTestProcess.relink))
    await until(lambda: testing.persistent_socket(linkee.pid) is not None)
    linkee.kill()
    await _exactly_one_exit(process, linkee.pid)


# ProcessRemoteLinkTest.RemoteDoubleLinkRelink
async def test_a_relink_does_not_disturb_another_linker(linkee: Linkee) -> None:
    linker = ExitedProcess(linkee.pid)
    relinker = RemoteLinkTestProcess(linkee.pid)
    spawn(linker)
    spawn(relinker)
    await await_ready(dispatch(relinker, RemoteLinkTestProcess.linkup))
    await await_ready(dispatch(relinker, RemoteLinkTestProcess.relink))
    await until(lambda: testing.persistent_socket(linkee.pid) is not None)
    linkee.kill()
    await _exactly_one_exit(linker, linkee.pid)
    await _exactly_one_exit(relinker, linkee.pid)


def _highest_fd() -> int:
    return max(int(name) for name in os.listdir("/proc/self/fd"))


# ProcessRemoteLinkTest.RemoteLinkLeak
async def test_a_link_that_cannot_get_a_socket_reports_exited(linkee: Linkee) -> None:
    relinker = RemoteLinkTestProcess(linkee.pid)
    spawn(relinker)
    await Clock.settle()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hogs: list[socket.socket] = []
    try:
        # Fill up every file descriptor (under a lowered limit, so there are few to fill).
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, _highest_fd() + 16), hard))
        while True:
            try:
                hogs.append(socket.socket())
            except OSError:
                break
        dispatch(relinker, RemoteLinkTestProcess.linkup)
        assert await await_ready(relinker.exited_pid.future) == linkee.pid
    finally:
        for hog in hogs:
            hog.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert hogs, "no file descriptor was left to hog"
    await _exactly_one_exit(relinker, linkee.pid)


async def _half_close_the_link(process: RemoteLinkTestProcess, linkee: Linkee) -> None:
    """Link, then shut the link's write side without telling libproc."""
    await await_ready(dispatch(process, RemoteLinkTestProcess.linkup))
    await until(lambda: testing.persistent_socket(linkee.pid) is not None)
    sock = testing.persistent_socket(linkee.pid)
    assert sock is not None
    sock.shutdown(socket.SHUT_WR)
    assert process.exited_pid.future.is_pending()


# ProcessRemoteLinkTest.RemoteUseStaleLink
async def test_sending_on_a_stale_link_reports_exited(linkee: Linkee) -> None:
    process = RemoteLinkTestProcess(linkee.pid)
    spawn(process)
    await _half_close_the_link(process, linkee)
    # The linkee keeps its half-open end: only a send can find the link dead.
    await asyncio.sleep(0.2)
    assert process.exited_pid.future.is_pending()
    dispatch(process, RemoteLinkTestProcess.ping_linkee)
    await _exactly_one_exit(process, linkee.pid)
    assert linkee.proc.poll() is None  # the message never reached it


# ProcessRemoteLinkTest.RemoteStaleLinkRelink
async def test_relink_replaces_a_stale_link(linkee: Linkee) -> None:
    process = RemoteLinkTestProcess(linkee.pid)
    spawn(process)
    await _half_close_the_link(process, linkee)
    dispatch(process, RemoteLinkTestProcess.relink)
    dispatch(process, RemoteLinkTestProcess.ping_linkee)
    # The message arrives on the new link: the linkee exits successfully ...
    returncode = await asyncio.get_running_loop().run_in_executor(None, linkee.proc.wait, 15)
    assert returncode == 0
    # ... and the linker hears of it once (not of the replaced link).
    await _exactly_one_exit(process, linkee.pid)
