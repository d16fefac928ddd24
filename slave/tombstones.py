"""Which sandboxes the garbage collector removed, and when: so that a request for a collected
task's logs is answered "collected" (410), not "never here", across slave restarts too.

Kept in memory (the last MAX_TOMBSTONES, oldest forgotten first) and in
`<work_dir>/collected.log`, one line per sandbox: `<name> <collected_at> <reason>`. Names are
sandbox directory names (`<escaped task id>@<attempt>`: no spaces or newlines), reasons
`delay` (`--gc-delay` after it ended) or `disk` (the disk was over `--gc-disk-watermark`).
Appended on the actor's loop, one write per collector pass; rewritten with the remembered
lines (atomically: a new file renamed over it) in a worker thread once it holds twice as many
lines, while no pass can append. Torn or garbled lines are skipped; a file that cannot be
written costs only the answers after a restart (logged once).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["FILE", "MAX_TOMBSTONES", "Tombstones"]

log = logging.getLogger("slave.gc")

FILE = "collected.log"
MAX_TOMBSTONES = 50_000
"""Collected sandboxes remembered (about 200 bytes each in memory)."""


class Tombstones:
    """The collected sandboxes of one work dir (see the module docstring)."""

    def __init__(self, work_dir: str, limit: int = MAX_TOMBSTONES) -> None:
        self.path = os.path.join(work_dir, FILE)
        self.limit = limit
        self._known: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lines = 0  # in the file, as far as we know
        self._warned = False

    def __len__(self) -> int:
        return len(self._known)

    def get(self, name: str) -> tuple[float, str] | None:
        """(collected_at, reason) of the sandbox `name`, or None if it was not collected."""
        return self._known.get(name)

    def forget(self, name: str) -> None:
        """`name` exists again (an attempt re-run): it is no longer collected."""
        self._known.pop(name, None)

    def read(self) -> list[tuple[str, float, str]]:
        """The file's last `limit` records, oldest first; in a worker thread at start-up."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read %s (collected sandboxes): %s", self.path, exc)
            return []
        out: list[tuple[str, float, str]] = []
        for line in lines:
            parts = line.split(b" ")
            if len(parts) != 3 or parts[2] not in (b"delay", b"disk"):
                continue
            try:
                out.append((parts[0].decode("ascii"), float(parts[1]), parts[2].decode()))
            except ValueError:  # UnicodeDecodeError too
                continue
        self._lines = len(out)
        return out[-self.limit:]

    def load(self, records: Iterable[tuple[str, float, str]]) -> None:
        """Take what `read` found (on the loop), under what was recorded since start."""
        since = list(self._known.items())
        self._known.clear()
        for name, at, reason in records:
            self._known[name] = (at, reason)
            self._known.move_to_end(name)
        for name, value in since:
            self._known[name] = value
            self._known.move_to_end(name)
        self._trim()

    def add(self, records: list[tuple[str, float, str]]) -> None:
        """Remember one pass's collected sandboxes, in memory and (one write) in the file."""
        if not records:
            return
        for name, at, reason in records:
            self._known[name] = (at, reason)
            self._known.move_to_end(name)
        self._trim()
        data = _encode(records)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self._lines += len(records)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot record collected sandboxes in %s (a restarted slave "
                            "will answer 404 for their logs, not 410): %s", self.path, exc)

    def wants_compaction(self) -> bool:
        return self._lines > 2 * self.limit

    def snapshot(self) -> list[tuple[str, float, str]]:
        """What `compact` writes; taken on the loop."""
        return [(name, at, reason) for name, (at, reason) in self._known.items()]

    def compact(self, records: list[tuple[str, float, str]]) -> None:
        """Rewrite the file with `records` only; in a worker thread, while nothing appends."""
        tmp = self.path + ".tmp"
        data = _encode(records)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            self._lines = len(records)
        except OSError as exc:
            log.warning("cannot rewrite %s: %s", self.path, exc)

    def _trim(self) -> None:
        while len(self._known) > self.limit:
            self._known.popitem(last=False)


def _encode(records: Iterable[tuple[str, float, str]]) -> bytes:
    return b"".join(f"{name} {at:.3f} {reason}\n".encode() for name, at, reason in records)
