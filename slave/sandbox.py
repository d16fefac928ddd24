"""Where a task attempt's files live: `<work_dir>/sandboxes/<escaped task id>@<attempt>/`.

The sandbox holds `stdout` and `stderr` (the child's own fds, opened for append: no pipes,
so a task outlives a dead slave). Two inodes per task, plus the directory: creating one costs
0.03-0.7 ms of kernel CPU on some file systems (ext4 without a journal scans past recently
deleted inodes), so nothing else is created per task.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

__all__ = ["legacy_sandbox_dir", "prepare_sandbox", "sandbox_dir", "sandbox_name",
           "sandbox_path"]

_BAD = frozenset("/\\\0")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # nothing to escape, not hidden
_SAFE = frozenset(string.ascii_letters + string.digits + "-_.")
_MAX_ATTEMPT = 10**14  # "<240-char id>@<attempt>" fits in a 255-byte file name
WRITE = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def sandbox_path(work_dir: str | os.PathLike[str], task_id: str, attempt: int) -> Path:
    """The sandbox of one attempt of a task. Raises ValueError for ids that could escape it.

    It is `<work_dir>/sandboxes/<escaped id>@<attempt>`. Characters outside [A-Za-z0-9._-]
    (so '@' too) are %-escaped, so distinct (id, attempt) pairs get distinct directories; ids
    with '/', '\\' or NUL, '.', '..' and empty ids are rejected outright.
    """
    return Path(sandbox_dir(os.fspath(work_dir), task_id, attempt))


def sandbox_dir(work_dir: str, task_id: str, attempt: int) -> str:
    """`sandbox_path` as a str, without pathlib (a few microseconds less per launch)."""
    if type(attempt) is int and 0 <= attempt < _MAX_ATTEMPT and type(task_id) is str \
            and _PLAIN_ID.fullmatch(task_id) and len(task_id) <= 240:
        return os.path.join(work_dir, "sandboxes", f"{task_id}@{attempt}")  # nothing to escape
    return os.path.join(work_dir, "sandboxes", f"{sandbox_name(task_id, attempt)}@{attempt}")


def legacy_sandbox_dir(work_dir: str, task_id: str, attempt: int) -> str:
    """Where slaves before the journal kept an attempt's sandbox: sandboxes/<id>/<attempt>/."""
    return os.path.join(work_dir, "sandboxes", sandbox_name(task_id, attempt), str(attempt))


def sandbox_name(task_id: str, attempt: int) -> str:
    """The escaped task id, validated (ValueError), for a sandbox's name."""
    if not isinstance(task_id, str) or task_id in ("", ".", "..") or _BAD & set(task_id):
        raise ValueError(
            f"task id {task_id!r} cannot name a sandbox: use a non-empty string other than "
            "'.' or '..' without '/', '\\' or NUL"
        )
    if type(attempt) is not int or not 0 <= attempt < _MAX_ATTEMPT:
        raise ValueError(f"attempt {attempt!r} must be a non-negative int below 10**14")
    name = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in task_id)
    if name.startswith("."):
        name = "%2E" + name[1:]  # no hidden directories
    if len(name) > 240:
        raise ValueError(f"task id {task_id[:40]!r}... is too long for a directory name")
    return name


def prepare_sandbox(sandbox: str) -> tuple[int, int, int]:
    """Create the sandbox; open stdout/stderr for the child and stdout for tailing."""
    try:
        os.mkdir(sandbox)
    except FileExistsError:  # a re-run of the same attempt
        pass
    except FileNotFoundError:  # no sandboxes/ yet
        os.makedirs(os.path.dirname(sandbox), exist_ok=True)
        try:
            os.mkdir(sandbox)
        except FileExistsError:
            pass
    fds: list[int] = []
    try:
        for name, flags in (("stdout", WRITE), ("stderr", WRITE), ("stdout", READ)):
            fds.append(os.open(os.path.join(sandbox, name), flags, 0o644))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1], fds[2]
