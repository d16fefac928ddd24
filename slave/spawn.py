"""Spawning task shells and watching them exit, without a thread per task.

`spawn_shell` forks `/bin/sh -c COMMAND` with `subprocess.Popen` (vfork + exec, no
preexec_fn: cheap even for a big slave process) in a new session, so the task is its own
process group. With `gated=True` the shell first waits on its stdin (a pipe) for the word
`go` and only then execs `/bin/sh -c COMMAND` (stdin /dev/null): the slave puts it in its
cgroups meanwhile, so not one process of the task runs outside them. Either way the task's
leader ends up as `/bin/sh -c COMMAND`, which orphan clean-up checks.

`ChildWatcher` reaps children on one loop: each child's pidfd goes into a private epoll set,
itself a single reader on the loop (one epoll_ctl per child instead of asyncio's
add_reader/remove_reader, and no thread per child as asyncio's ThreadedChildWatcher has).
Where pidfds are unavailable (Linux < 5.3, seccomp, a loop without add_reader) a daemon
thread per child waits instead. Children are reaped with wait4, so their rusage (CPU of the
shell and of everything it waited for, peak RSS) is kept for the task's final usage.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import select
import signal
import subprocess
import threading
from collections.abc import Mapping

from slave.orphans import SHELL

__all__ = ["ChildWatcher", "describe", "release", "spawn_shell", "task_env"]

log = logging.getLogger("slave.executor")

GATE = 'IFS= read -r go && [ "$go" = go ] || exit 125; exec /bin/sh -c "$1" </dev/null'
"""The gated shell: waits for `go` on stdin, then becomes `/bin/sh -c COMMAND` ($1)."""

_use_pidfd = hasattr(os, "pidfd_open")
"""Watch children with pidfds; cleared for good when the kernel (or a seccomp filter) says no."""


def spawn_shell(command: str, sandbox: str, out: int, err: int, env: Mapping[str, str],
                gated: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Fork the task's shell; (its Popen, the gate's write end or -1). Blocks until exec."""
    if not gated:
        return subprocess.Popen(
            (SHELL, "-c", command), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            cwd=sandbox, env=env, start_new_session=True,
        ), -1  # fmt: skip
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            (SHELL, "-c", GATE, SHELL, command), stdin=r, stdout=out, stderr=err,
            cwd=sandbox, env=env, start_new_session=True,
        )  # fmt: skip
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return proc, w


def release(gate: int, go: bool) -> None:
    """Let a gated shell run its command (`go`), or make it exit 125 without running it."""
    try:
        if go:
            os.write(gate, b"go\n")
    finally:
        os.close(gate)


def describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"


def task_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` minus LIBPROCESS_*, with PYTHONUNBUFFERED=1 unless set."""
    env = {k: v for k, v in base.items() if not k.startswith("LIBPROCESS_")}
    env.setdefault("PYTHONUNBUFFERED", "1")  # else a Python task's PROGRESS lines lag
    return env


class ChildWatcher:
    """Reaps the executor's children on one loop and reports their returncodes.

    A child is reaped whatever becomes of its future: cancelling it only drops the result.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = None
        self._children: dict[int, tuple[subprocess.Popen[bytes], asyncio.Future[int]]] = {}
        self._rusage: dict[int, resource.struct_rusage] = {}

    def watch(self, proc: subprocess.Popen[bytes]) -> asyncio.Future[int]:
        """A future for `proc`'s returncode (-N if killed by signal N), set on the loop."""
        exit_code: asyncio.Future[int] = self.loop.create_future()
        if not (_use_pidfd and self._watch_pidfd(proc, exit_code)):
            threading.Thread(target=self._wait_in_thread, args=(proc, exit_code),
                             name=f"wait-{proc.pid}", daemon=True).start()
        return exit_code

    def pop_rusage(self, pid: int) -> resource.struct_rusage | None:
        """The rusage of a reaped child (once; None if it was not reaped by wait4)."""
        return self._rusage.pop(pid, None)

    def _watch_pidfd(self, proc: subprocess.Popen[bytes], exit_code: asyncio.Future[int]) -> bool:
        global _use_pidfd
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):  # old kernel or seccomp
                log.info("pidfd_open unavailable (%s): one waiting thread per task instead", e)
                _use_pidfd = False
            else:  # e.g. EMFILE: for this child only
                log.warning("pidfd_open(%d) failed (%s): waiting in a thread", proc.pid, e)
            return False
        try:
            if self._epoll is None:
                epoll = select.epoll()
                try:
                    self.loop.add_reader(epoll.fileno(), self._ready)
                except BaseException:
                    epoll.close()
                    raise
                self._epoll = epoll
            self._epoll.register(pidfd, select.EPOLLIN)
        except (NotImplementedError, OSError, ValueError) as e:  # e.g. a loop without readers
            os.close(pidfd)
            log.info("cannot watch pidfds on this loop (%r): waiting in threads", e)
            _use_pidfd = False
            return False
        self._children[pidfd] = (proc, exit_code)
        return True

    def _reap(self, proc: subprocess.Popen[bytes], block: bool) -> int | None:
        """wait4 the child (keeping its rusage); its returncode, None if it runs still."""
        try:
            pid, status, rusage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (e.g. by Popen itself)
            return proc.wait() if block else proc.poll()
        if pid == 0:
            return None
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._rusage[proc.pid] = rusage
        return proc.returncode

    def _ready(self) -> None:
        assert self._epoll is not None
        for pidfd, _ in self._epoll.poll(0):
            proc, exit_code = self._children[pidfd]
            rc = self._reap(proc, block=False)
            if rc is None:  # a readable pidfd means it exited: cannot happen
                continue
            del self._children[pidfd]
            self._epoll.unregister(pidfd)
            os.close(pidfd)
            _set_exit(exit_code, rc)

    def _wait_in_thread(self, proc: subprocess.Popen[bytes],
                        exit_code: asyncio.Future[int]) -> None:
        rc = self._reap(proc, block=True)
        assert rc is not None
        try:
            self.loop.call_soon_threadsafe(_set_exit, exit_code, rc)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def close_if_idle(self) -> None:
        """Give the epoll set back unless children are still watched."""
        if self._epoll is not None and not self._children:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


def _set_exit(exit_code: asyncio.Future[int], rc: int) -> None:
    if not exit_code.done():
        exit_code.set_result(rc)
