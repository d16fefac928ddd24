"""Server-Sent Events, the parsing half: bytes of a `text/event-stream` body in, events out.

Pure (no sockets, no clock), so it is tested on its own; `cli.event_feed` feeds it what it
reads from `GET /master/events`. It follows the WHATWG event-stream rules that matter to a
client: lines end with CRLF, LF or CR (a CR at the end of one read and an LF at the start
of the next are one line end); `field: value` with one leading space dropped; a line with
no colon is a field with an empty value; lines starting with `:` are comments; `data` lines
are joined with LF; an empty line dispatches the event (none when it has no data); the last
`id` is remembered across events (an `id` holding NUL is ignored); `retry` takes digits
only; a leading byte-order mark is dropped; text is UTF-8, bad bytes replaced.

Contract: `feed()` never raises for odd input except `SSEError` when a line or an event's
data passes `max_event` bytes, so a hostile or broken server cannot make the CLI hold an
unbounded buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEError", "SSEEvent", "SSEParser"]

MAX_EVENT = 8 << 20  # bytes: a line or an event's data (the master's largest is far smaller)


_BOM = b"\xef\xbb\xbf"


class SSEError(Exception):
    """The stream broke a bound or the format (the caller drops the connection)."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its type (`message` unless named), data, and the last id."""

    data: str
    event: str = "message"
    id: str = ""


class SSEParser:
    """Incremental: call `feed(chunk)` with each read; it returns the events completed."""

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self.max_event = max_event
        self.last_id = ""
        self.retry_ms: int | None = None
        self.comments = 0  # keep-alives and other comment lines seen
        self._partial = b""  # an incomplete line
        self._skip_lf = False  # the previous chunk ended with CR
        self._started = False  # the BOM check is done
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._partial + chunk
        if not self._started:
            if len(buf) < len(_BOM) and b"\n" not in buf and b"\r" not in buf:
                self._partial = buf
                return []
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
            self._started = True
        out: list[SSEEvent] = []
        start, size = 0, len(buf)
        lf = cr = -1  # the next LF and CR at or after `start` (size: none left)
        while start < size:
            if lf < start:
                lf = _find(buf, b"\n", start)
            if cr < start:
                cr = _find(buf, b"\r", start)
            end = min(lf, cr)
            if end == size:
                break
            event = self._line(buf[start:end])
            if event is not None:
                out.append(event)
            if end == cr:  # a CR: an LF right after it belongs to the same line end
                if end + 1 < size:
                    end += buf[end + 1] == 10
                else:
                    self._skip_lf = True
            start = end + 1
        self._partial = buf[start:]
        if len(self._partial) > self.max_event:
            raise SSEError(f"an event-stream line is over {self.max_event} bytes")
        return out

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            self.comments += 1
            return None
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_size += len(raw)
            if self._data_size > self.max_event:
                raise SSEError(f"an event's data is over {self.max_event} bytes")
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "event":
            self._event = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        return None  # any other field is ignored

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self.last_id)


def _find(buf: bytes, sep: bytes, start: int) -> int:
    """The index of `sep` at or after `start`, or len(buf): each byte is scanned once."""
    at = buf.find(sep, start)
    return len(buf) if at < 0 else at
