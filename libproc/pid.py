"""UPID: the address of a process, written `id@host:port` (libprocess's pid.hpp).

Pure: parsing, formatting, comparison. No I/O. The id may be empty (a UPID that names only an
OS process's address); the host is an IPv4 literal or, as a libproc extension, a hostname.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from libproc.errors import InvalidUPIDError

__all__ = ["UPID", "ID"]


@dataclass(frozen=True, slots=True)
class UPID:
    """An immutable process address; equal UPIDs name the same process."""

    id: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> UPID:
        """Parse `id@host:port`; raises InvalidUPIDError with the reason."""
        if not isinstance(text, str):
            raise InvalidUPIDError(repr(text), "not a string")
        text = text.strip()
        at = text.rfind("@")
        if at < 0:
            raise InvalidUPIDError(text, "missing '@'")
        pid_id, address = text[:at], text[at + 1 :]
        colon = address.rfind(":")
        if colon <= 0:
            raise InvalidUPIDError(text, "missing host or ':port'")
        host, port_text = address[:colon], address[colon + 1 :]
        if not port_text.isdigit() or len(port_text) > 5:
            raise InvalidUPIDError(text, f"port {port_text!r} is not a number")
        port = int(port_text)
        if port > 65535:
            raise InvalidUPIDError(text, f"port {port} is out of range")
        if any(c in host for c in " /@\t\r\n"):
            raise InvalidUPIDError(text, f"host {host!r} is not a host name or IP")
        if any(c in pid_id for c in " \t\r\n/"):
            raise InvalidUPIDError(text, f"id {pid_id!r} contains a space or '/'")
        return cls(pid_id, host, port)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def with_id(self, pid_id: str) -> UPID:
        return UPID(pid_id, self.host, self.port)

    def __str__(self) -> str:
        return f"{self.id}@{self.host}:{self.port}"

    def __bool__(self) -> bool:
        return bool(self.id) or bool(self.host) or self.port != 0


class ID:
    """Generates process ids from a prefix: `generate("slave")` -> `slave(1)`, `slave(2)`."""

    _counters: dict[str, itertools.count[int]] = {}
    _lock = threading.Lock()

    @classmethod
    def generate(cls, prefix: str) -> str:
        with cls._lock:
            counter = cls._counters.setdefault(prefix, itertools.count(1))
            return f"{prefix}({next(counter)})"
