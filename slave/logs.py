"""Reading a task's logs: tailing stdout for PROGRESS lines, and `read_log` for clients.

Both read a bounded amount per call: a task that writes gigabytes costs the slave at most
MAX_TAIL bytes per progress poll and MAX_READ bytes per log request.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from slave.progress import ProgressScanner
from slave.sandbox import READ, legacy_sandbox_dir, sandbox_dir

__all__ = ["MAX_READ", "MAX_TAIL", "ProgressTail", "Stream", "read_log"]

log = logging.getLogger("slave.executor")

Stream = Literal["stdout", "stderr"]

MAX_TAIL = 64 * 1024
"""Most stdout bytes scanned per task per poll; a task that wrote more is scanned from the end."""
MAX_READ = 1024 * 1024
"""Most bytes one `read_log` call returns, whatever limit is asked for."""


@dataclass(eq=False)
class ProgressTail:
    """Follows one task's stdout (through its own read-only fd) for PROGRESS lines."""

    reader: int = -1  # read-only fd on stdout
    offset: int = 0  # how far `scanner` has read stdout
    scanner: ProgressScanner = field(default_factory=ProgressScanner)

    def start(self, fd: int) -> None:
        """Tail `fd` from its current end (a re-run of an attempt appends to its logs)."""
        self.reader = fd
        self.offset = os.fstat(fd).st_size

    def scan(self, task_id: str) -> None:
        if self.reader < 0:
            return
        try:
            size = os.fstat(self.reader).st_size
            if size < self.offset:  # the task truncated its own stdout
                self.offset = 0
                self.scanner.skip_to_next_line()
            if size - self.offset > MAX_TAIL:
                self.offset = size - MAX_TAIL
                self.scanner.skip_to_next_line()
            while self.offset < size:
                data = os.pread(self.reader, size - self.offset, self.offset)
                if not data:
                    break
                self.offset += len(data)
                self.scanner.feed(data)
        except OSError as e:
            log.warning("task %s: cannot read stdout for progress: %s", task_id, e)

    def close(self) -> None:
        if self.reader >= 0:
            os.close(self.reader)
            self.reader = -1


def read_log(work_dir: str, task_id: str, attempt: int, stream: Stream, offset: int,
             limit: int, running: bool) -> tuple[bytes, int, bool]:
    """Read a task's log from `offset`: (data, new_offset, eof_known); see Executor.read_log.

    `running`: the attempt runs here now (its sandbox may not be set up yet)."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream {stream!r} must be 'stdout' or 'stderr'")
    if type(offset) is not int or offset < 0 or type(limit) is not int or limit < 0:
        raise ValueError(f"offset {offset!r} and limit {limit!r} must be non-negative ints")
    path = os.path.join(sandbox_dir(work_dir, task_id, attempt), stream)
    try:
        fd = os.open(path, READ)
    except FileNotFoundError:
        if running:  # launched, sandbox not set up yet
            return b"", offset, False
        try:  # run by a slave from before the flat sandboxes/<id>@<attempt>/ layout?
            fd = os.open(os.path.join(legacy_sandbox_dir(work_dir, task_id, attempt), stream),
                         READ)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {stream} for task {task_id!r} attempt {attempt} in {work_dir}; "
                "check the task id and attempt, or ask the slave that ran it"
            ) from None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(limit, MAX_READ), offset) if offset < size else b""
    finally:
        os.close(fd)
    new_offset = offset + len(data)
    return data, new_offset, not running and new_offset >= size
