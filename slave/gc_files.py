"""The garbage collector's file work: finding ended sandboxes, removing them, measuring the
disk. Everything here may block (a large tree, a slow disk), so the collector calls it in a
worker thread, except `move_to_trash` (one rename, on the loop, so that no launch can come
between the check that a sandbox is not in use and its removal).

Only entries of `<work_dir>/sandboxes/` named `<id>@<attempt>` (the current layout) and
`<work_dir>/gc-trash/` are ever touched; symbolic links are removed, never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

__all__ = ["TRASH", "DiskUsage", "disk_usage", "move_to_trash", "remove_trees",
           "scan_sandboxes", "usage_of"]

log = logging.getLogger("slave.gc")

TRASH = "gc-trash"
"""Where sandboxes go, in the work dir, between being taken and being deleted."""


@dataclass(frozen=True)
class DiskUsage:
    """How full the work dir's file system is: the larger of its blocks and inodes used."""

    fraction: float  # max(blocks, inodes), 0..1
    blocks: float
    inodes: float


def usage_of(st: os.statvfs_result) -> DiskUsage:
    """Used fractions from statvfs (pure): blocks as Mesos's fs::usage counts them
    ((total - free) / total, root's reserve counted as used by nobody), and inodes, since
    a sandbox costs three and a file system can run out of them first."""
    blocks = (st.f_blocks - st.f_bfree) / st.f_blocks if st.f_blocks else 0.0
    inodes = (st.f_files - st.f_ffree) / st.f_files if st.f_files else 0.0
    return DiskUsage(max(blocks, inodes), blocks, inodes)


def disk_usage(path: str) -> DiskUsage | None:
    """`usage_of` the file system holding `path`; None (logged) when it cannot be read."""
    try:
        return usage_of(os.statvfs(path))
    except OSError as exc:
        log.warning("cannot measure the disk of %s: %s", path, exc)
        return None


def scan_sandboxes(sandboxes: str) -> list[tuple[float, str]]:
    """`(mtime, name)` of every sandbox directory, in no order (a sort of them all would
    hold the GIL). The collector touches a sandbox when its task ends, so its mtime says when
    it ended (as Mesos's agent does)."""
    out: list[tuple[float, str]] = []
    try:
        with os.scandir(sandboxes) as entries:
            for entry in entries:
                if "@" not in entry.name:  # the legacy layout <id>/<attempt>/: left alone
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.append((st.st_mtime, entry.name))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot list the sandboxes in %s: %s", sandboxes, exc)
        return []
    return out


def move_to_trash(src: str, trash: str, tag: str) -> str | None:
    """Rename `src` into `trash` as `<tag>-<name>`; the new path, or None when `src` is
    gone. Raises OSError for any other failure."""
    dst = os.path.join(trash, f"{tag}-{os.path.basename(src)}")
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        if os.path.lexists(src):  # it is there, so the trash is not: make it, once
            os.makedirs(trash, exist_ok=True)
            os.rename(src, dst)
        else:
            return None
    return dst


def remove_trees(paths: list[str]) -> tuple[int, int, list[str]]:
    """Delete each path whole (a directory tree, a file or a link): (bytes freed, paths not
    removed, one error line per such path). Goes on past errors, as Mesos's GC does, to free
    what it can; a directory the task made unreadable is opened up first."""
    freed, failed, errors = 0, 0, []
    for path in paths:
        size, error = _remove_tree(path)
        freed += size
        if error is not None:
            failed += 1
            errors.append(error)
    return freed, failed, errors


def _remove_tree(top: str) -> tuple[int, str | None]:
    """Bytes freed (blocks of inodes whose last link went) and the first error, if any."""
    freed, first_error = 0, None
    stack: list[tuple[str, bool]] = [(top, False)]  # (path, its entries are removed)
    while stack:
        path, emptied = stack.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            first_error = first_error or f"{path}: {exc.strerror or exc}"
            continue
        if stat.S_ISDIR(st.st_mode) and not emptied:
            stack.append((path, True))
            try:
                if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
                    os.chmod(path, st.st_mode | stat.S_IRWXU)
                with os.scandir(path) as entries:
                    stack.extend((entry.path, False) for entry in entries)
            except OSError as exc:
                first_error = first_error or f"{path}: {exc.strerror or exc}"
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                first_error = first_error or f"{path}: {exc.strerror or exc}"
            continue
        if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            freed += st.st_blocks * 512
    return freed, first_error
