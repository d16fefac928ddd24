"""File I/O on cgroup hierarchies, shared by the v1 and v2 isolators.

One function per thing done to a cgroup directory, as Mesos's src/linux/cgroups.hpp; every
failure is an IsolationError naming the file and the errno, so that the slave's log (or the
task's "could not start: ..." message) says what the kernel refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable

from slave import procfs
from slave.isolation.base import IsolationError
from slave.isolation.parse import Mount, mountinfo, proc_cgroup

__all__ = [
    "STATE_FILE", "cgroup_dir", "earlier_dirs", "kill_procs", "make_dir", "mounts", "procs",
    "read", "read_int", "remove_dir", "slave_dir_name", "task_children", "task_dir_name",
    "wait_empty", "write", "write_state",
]

log = logging.getLogger("slave.isolation")

SLAVE_PREFIX = "cluster-slave-"
TASK_PREFIX = "task-"
STATE_FILE = "isolation.json"
"""In the work dir: where this slave's cgroups are, so a successor finds them wherever it runs."""


def slave_dir_name(work_dir: str) -> str:
    """The per-slave cgroup's name: the same for every slave started on `work_dir`."""
    digest = hashlib.sha256(os.path.abspath(work_dir).encode(errors="surrogateescape"))
    return SLAVE_PREFIX + digest.hexdigest()[:16]


def task_dir_name(key: str) -> str:
    """A task attempt's cgroup name; `key` is its (already escaped) sandbox name. One too long
    for a file name (255 bytes) is named by its digest instead."""
    name = TASK_PREFIX + key
    if len(name.encode()) > 255:
        name = TASK_PREFIX + hashlib.sha256(key.encode()).hexdigest()
    return name


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise IsolationError(f"cannot read {path}: {e.strerror or e}") from None


def read_int(path: str) -> int:
    text = read(path)
    try:
        return int(text.strip())
    except ValueError:
        raise IsolationError(f"{path} holds {text.strip()[:40]!r}, not a number") from None


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise IsolationError(f"cannot open {path} for writing: {e.strerror or e}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise IsolationError(
            f"the kernel refused {value.strip()!r} in {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def make_dir(path: str) -> None:
    """Create a cgroup. A task's whose per-slave parent is gone (removed while it was empty,
    by an administrator or a clean-up tool) gets that parent back first."""
    parent = os.path.dirname(path)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except FileNotFoundError as e:
        if not os.path.basename(parent).startswith(SLAVE_PREFIX) or not os.path.isdir(
                os.path.dirname(parent)):
            raise IsolationError(f"cannot create the cgroup {path}: {e.strerror or e}") from None
        log.warning("the slave's cgroup %s was removed while in use; creating it again",
                    parent)
        make_dir(parent)
        make_dir(path)
    except OSError as e:
        raise IsolationError(f"cannot create the cgroup {path}: {e.strerror or e}") from None


def procs(path: str) -> list[int]:
    """The pids in a cgroup (cgroup.procs); empty if it is gone."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise IsolationError(f"cannot list the processes of {path}: {e}") from None


def kill_procs(path: str, sig: signal.Signals = signal.SIGKILL) -> int:
    return procfs.kill_pids(procs(path), sig)


def wait_empty(path: str, timeout: float = 5.0) -> bool:
    """Poll until the cgroup has no process (killed ones take a moment to exit)."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while procs(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return True


def remove_dir(path: str) -> bool:
    """rmdir a cgroup and its children (depth first); False if some still hold processes."""
    try:  # a task's cgroup has no children: one rmdir, no listing
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise IsolationError(f"cannot remove the cgroup {path}: {e.strerror or e}") from None
    try:
        with os.scandir(path) as entries:
            children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return True
    except OSError as e:
        raise IsolationError(f"cannot list {path}: {e.strerror or e}") from None
    ok = all([remove_dir(child) for child in children])
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise IsolationError(f"cannot remove the cgroup {path}: {e.strerror or e}") from None
    return ok


def mounts() -> list[Mount]:
    try:
        with open("/proc/self/mountinfo") as f:
            return mountinfo(f.read())
    except OSError as e:
        raise IsolationError(f"cannot read /proc/self/mountinfo: {e.strerror or e}") from None


def own_cgroups() -> tuple[dict[str, str], str | None]:
    try:
        with open("/proc/self/cgroup") as f:
            return proc_cgroup(f.read())
    except OSError as e:
        raise IsolationError(f"cannot read /proc/self/cgroup: {e.strerror or e}") from None


def cgroup_dir(mount: Mount, own_path: str) -> str:
    """Where our own cgroup (`own_path` in the hierarchy) is under `mount`."""
    root = mount.root.rstrip("/")
    rel = own_path[len(root):] if root and own_path.startswith(root + "/") else own_path
    if root and own_path == root:
        rel = "/"
    return os.path.normpath(mount.mountpoint + "/" + rel.lstrip("/"))


def earlier_dirs(work_dir: str, version: str) -> dict[str, str]:
    """{controller: cgroup} of the slave that last ran on `work_dir` with cgroups `version`,
    from its state file. Only directories under a cgroup mount named for this very work dir
    count: a state file written by someone else cannot point at another slave's tasks."""
    state = read_state(work_dir)
    dirs = state.get("dirs")
    if state.get("version") != version or not isinstance(dirs, dict):
        return {}
    points = [m.mountpoint.rstrip("/") + "/" for m in mounts()]
    ours = slave_dir_name(work_dir)
    ok = {}
    for controller, d in dirs.items():
        if not (isinstance(controller, str) and isinstance(d, str)):
            continue
        d = os.path.normpath(d)
        if os.path.basename(d) == ours and any(d.startswith(p) for p in points):
            ok[controller] = d
    return ok


def task_children(parents: Iterable[str]) -> set[str]:
    """Names of the task cgroups under any of `parents`."""
    names: set[str] = set()
    for parent in dict.fromkeys(parents):
        try:
            with os.scandir(parent) as entries:
                names.update(e.name for e in entries if e.is_dir(follow_symlinks=False)
                             and e.name.startswith(TASK_PREFIX))
        except OSError:
            continue
    return names


def read_state(work_dir: str) -> dict[str, object]:
    try:
        with open(os.path.join(work_dir, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(work_dir: str, version: str, dirs: dict[str, str]) -> None:
    path = os.path.join(work_dir, STATE_FILE)
    try:
        os.makedirs(work_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"version": version, "dirs": dirs}, f)
        os.replace(path + ".tmp", path)
    except OSError as e:
        log.warning("cannot record this slave's cgroups in %s: %s", path, e)
