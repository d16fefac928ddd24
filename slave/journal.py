"""The executor's task journal: `<work_dir>/tasks.journal`, one JSON line per event.

A start record (task id, attempt, sandbox, pid, pgid, the leader's start ticks, command, the
digests of the command and of the leader's /proc cmdline, the task's cgroup if any,
started_at) once the shell is spawned; an end record (state, exit_code, finished_at) when its
result is reported. `orphans.kill_orphans` reads it after a crash. Plain writes, no fsync:
the journal only has to survive the slave process, not the machine (no task survives a
reboot). Opened once for append; rewritten (atomically: a new file renamed over it) with
only the running tasks' start records at start-up and whenever it outgrows
JOURNAL_COMPACT_AT. A torn last line (a crash mid-write) is ended before the next record, so
it cannot swallow it; torn and garbled lines are skipped by readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slave import procfs

__all__ = ["JOURNAL", "JOURNAL_COMPACT_AT", "MAX_RECORDED_COMMAND", "Journal", "end_record",
           "legacy_records", "sha256", "start_record", "unended_starts"]

log = logging.getLogger("slave.executor")

JOURNAL = "tasks.journal"
"""The executor's journal of task starts and ends, in the work dir."""
JOURNAL_COMPACT_AT = 4 * 1024 * 1024
"""Journal size (bytes) past which it is rewritten with only the running tasks' starts (or at
twice its size after the last rewrite, if that is more)."""
MAX_RECORDED_COMMAND = 1024
"""Most characters of a task's command kept in its journal record (its digest covers it all)."""

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_record(task_id: str, attempt: int, name: str, sandbox: str | None, command: str,
                 pgid: int, started_at: float, cgroup: str | None) -> dict[str, Any]:
    """A start record, with what proves the group ours later: the leader's start time
    (boot-relative, so pid reuse shows) and the digests of the command and of the leader's
    cmdline as it is now (a shell that already exec'd its command)."""
    cmdline = procfs.cmdline(pgid)
    record = {
        "event": "start", "task_id": task_id, "attempt": attempt, "name": name,
        "sandbox": sandbox, "command": command[:MAX_RECORDED_COMMAND],
        "command_sha256": sha256(os.fsencode(command)),
        "cmdline_sha256": None if cmdline is None else sha256(cmdline),
        "pid": pgid, "pgid": pgid, "start_ticks": procfs.start_ticks(pgid),
        "started_at": started_at,
    }  # fmt: skip
    if cgroup is not None:
        record["cgroup"] = cgroup
    return record


def end_record(task_id: str, attempt: int, pgid: int, state: str, exit_code: int | None,
               finished_at: float) -> dict[str, Any]:
    return {"event": "end", "task_id": task_id, "attempt": attempt, "pgid": pgid,
            "state": state, "exit_code": exit_code, "finished_at": finished_at}


class Journal:
    """One executor's journal file. Use from one thread (the executor's loop)."""

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(work_dir, JOURNAL)
        self._fd = -1  # opened at the first record
        self._size = 0  # bytes in it, as far as we know
        self._limit = JOURNAL_COMPACT_AT  # compact past this size
        self._torn = False  # the last append may have been cut short

    def append(self, record: dict[str, Any]) -> bool:
        """Append one record; False (logged) if it could not be written. True if the journal
        has outgrown its limit and wants `compact`."""
        line = json.dumps(record).encode() + b"\n"  # one line: json escapes newlines
        try:
            if self._fd < 0:
                self._open()
            if self._torn:  # end the torn line, or this record would be lost with it
                line = b"\n" + line
            self._torn = True
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            self._torn = False
            self._size += len(line)
        except OSError as e:  # only orphan clean-up after a crash is weaker
            log.warning("task %s: could not write to the task journal: %s",
                        record.get("task_id"), e)
            return False
        return self._size > self._limit

    def known_size(self) -> int:
        """The bytes written so far (a reader of the first that many sees only our past)."""
        if self._fd >= 0:
            return self._size
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _open(self) -> None:
        fd = os.open(self.path, _FLAGS, 0o644)
        try:
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size, self._torn = fd, size, torn

    def compact(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the journal by one holding only `records` (the running tasks' starts).

        Atomic, so a crash at any point leaves a journal with every running task's start; on
        the loop, so no record of ours can slip in between. OSError is logged, and the next
        attempt waits until the journal has doubled."""
        data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, _FLAGS | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.replace(tmp, self.path)
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            log.warning("could not compact the task journal: %s", e)
            self._limit = 2 * self._size  # do not retry at every record
            return
        self.close()
        self._fd, self._size, self._torn = fd, len(data), False
        self._limit = max(JOURNAL_COMPACT_AT, 2 * len(data))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def legacy_records(sandboxes: Path) -> list[Path]:
    """task.json files left by a slave from before the journal, upgraded while tasks ran:
    `sandboxes/<id>/<attempt>/task.json` (sandboxes named `<id>@<attempt>` are not looked in).
    """
    try:
        with os.scandir(sandboxes) as entries:
            dirs = [e.name for e in entries if "@" not in e.name and e.is_dir()]
    except OSError:
        return []
    return sorted(p for name in dirs for p in (sandboxes / name).glob("*/task.json"))


def unended_starts(journal: Path, size: int | None = None) -> list[dict[str, Any]]:
    """The start records that no end record follows in the journal (its first `size` bytes,
    or all of it), in order; skips torn and garbled lines."""
    starts: dict[tuple[str, int, int], dict[str, Any]] = {}
    try:
        with open(journal, "rb") as f:
            lines = f.read(-1 if size is None else size).split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("cannot read the task journal %s: %s", journal, e)
        return []
    for line in lines:
        try:
            record = json.loads(line)
            key = (str(record["task_id"]), int(record["attempt"]), record["pgid"])
            event = record["event"]
        except (ValueError, KeyError, TypeError):  # torn or garbled (UnicodeError too)
            continue
        if type(key[2]) is not int:  # a pgid of 12.7 or "12" was never written by us
            continue
        if event == "start":
            starts[key] = record
        elif event == "end":
            starts.pop(key, None)
    return list(starts.values())
