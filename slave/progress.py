"""Progress lines: the `PROGRESS <percent>` contract, parsed. Pure: no I/O, no clock.

A task reports progress by printing a line `PROGRESS 42` or `PROGRESS 42.5%` to stdout
(DESIGN.md §3.3, a product contract). `parse_progress_line` turns one line into a fraction in
0..1 (clamped), or None for anything else. `ProgressScanner` is fed the task's stdout as raw
byte chunks, cut anywhere, and remembers the last progress seen. It keeps at most
`max_line` bytes of an unfinished line: the rest of a longer line is discarded unread, so a
task printing gigabytes without a newline costs the slave nothing. Such a line cannot be a
progress line anyway.
"""

from __future__ import annotations

import math
import re

__all__ = ["MAX_LINE", "ProgressScanner", "parse_progress_line"]

MAX_LINE = 4096
"""Longest partial line a scanner buffers; longer lines are skipped up to their newline."""

# A plain decimal number only: float() alone would also take "nan", "inf", "1_0" and "٤٢".
_LINE = re.compile(
    rb"PROGRESS[ \t]+([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t]*%?"
)


def parse_progress_line(line: str | bytes) -> float | None:
    """Return the progress a line reports as a fraction 0..1, or None if it reports none.

    Surrounding whitespace (spaces, tabs, \\r, \\n) is ignored; percentages beyond 0..100 are
    clamped; non-finite numbers and anything else give None.

    >>> parse_progress_line("PROGRESS 42.5%\\r\\n")
    0.425
    """
    raw = line.encode("utf-8", "replace") if isinstance(line, str) else line
    match = _LINE.fullmatch(raw.strip())
    if match is None:
        return None
    percent = float(match.group(1))
    if not math.isfinite(percent):  # e.g. 1e999 overflows to inf
        return None
    return min(max(percent, 0.0), 100.0) / 100.0


class ProgressScanner:
    """Incremental scanner over a byte stream; `last` is the latest progress seen (or None).

    Not thread-safe: feed it from one place (the executor feeds it on the event loop).
    """

    __slots__ = ("_max_line", "_partial", "_skipping", "last")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.last: float | None = None
        self._partial = bytearray()
        self._skipping = False  # inside an over-long line: drop bytes until its newline
        self._max_line = max_line

    def feed(self, chunk: bytes) -> float | None:
        """Consume a chunk; return the last progress found in this chunk's complete lines."""
        found: float | None = None
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                if self._partial:
                    self._partial += chunk[start:end]
                    value = parse_progress_line(bytes(self._partial))
                    self._partial.clear()
                else:
                    value = parse_progress_line(chunk[start:end])
                if value is not None:
                    found = value
            start = end + 1
        if not self._skipping and start < len(chunk):
            if len(self._partial) + len(chunk) - start > self._max_line:
                self.skip_to_next_line()
            else:
                self._partial += chunk[start:]
        if found is not None:
            self.last = found
        return found

    def flush(self) -> float | None:
        """At end of stream: treat a buffered unterminated line as complete."""
        value = None if self._skipping else parse_progress_line(bytes(self._partial))
        self._partial.clear()
        self._skipping = False
        if value is not None:
            self.last = value
        return value

    def skip_to_next_line(self) -> None:
        """Forget the current partial line and ignore input up to the next newline.

        For callers that jump over part of the stream: the bytes after the jump start in the
        middle of some line, which must not be read as a line of its own.
        """
        self._partial.clear()
        self._skipping = True
