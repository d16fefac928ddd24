"""The znodes through which masters contend and everyone finds the leader — pure: no I/O.

This is a protocol between masters (which write it, master/election.py), slaves and clients
(which read it, protos/detector.py), so it lives here, in one place. As Mesos's contender
does, every master creates an EPHEMERAL SEQUENTIAL znode under the cluster's path, named
`json.info_<10-digit sequence>`, holding its `MasterInfo`-like JSON:

    {"http": "http://10.0.0.5:5050", "id": "6f1c...", "pid": "master@10.0.0.5:5050",
     "version": "0.1.0"}

**The leader is the member with the lowest sequence** (the oldest). Other children of the
path are ignored, so other tools may keep znodes there. Data is at most `MAX_DATA` bytes of
UTF-8 JSON, an object; `pid` (a UPID) and `http` (`http[s]://host:port`) are required and
checked, unknown keys are ignored (newer masters may add some).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from libproc import UPID
from libproc.errors import InvalidUPIDError

__all__ = [
    "LABEL", "MAX_DATA", "LeaderInfo", "LeaderInfoError", "leader_member", "members",
    "sequence_of",
]

LABEL = "json.info"
MAX_DATA = 16 * 1024
_MEMBER = re.compile(re.escape(LABEL) + r"_(\d{10})")
_ID = re.compile(r"[A-Za-z0-9_.:-]{0,128}")


class LeaderInfoError(ValueError):
    """A member znode's data is not a master's info; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who a contending master is: its UPID and the base URL of its HTTP API."""

    pid: str
    http: str
    id: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        _check_pid(self.pid)
        _check_http(self.http)
        for name in ("id", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID.fullmatch(value):
                raise LeaderInfoError(f"{name} {value!r} must be up to 128 of A-Za-z0-9_.:-")

    @property
    def upid(self) -> UPID:
        return UPID.parse(self.pid)

    def encode(self) -> bytes:
        """The znode's data: compact JSON with sorted keys."""
        fields = {"pid": self.pid, "http": self.http, "id": self.id, "version": self.version}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> LeaderInfo:
        """Parse a member's data; raises LeaderInfoError saying what is wrong."""
        if data is None or not data:
            raise LeaderInfoError("the znode holds no data")
        if len(data) > MAX_DATA:
            raise LeaderInfoError(f"the znode holds {len(data)} bytes (at most {MAX_DATA})")
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise LeaderInfoError(f"the znode's data is not UTF-8 JSON: {exc}") from None
        if not isinstance(value, dict):
            raise LeaderInfoError(f"the znode's JSON is a {type(value).__name__}, not an object")
        missing = [key for key in ("pid", "http") if key not in value]
        if missing:
            raise LeaderInfoError(f"the znode's JSON has no {' or '.join(missing)}")
        fields = {key: value.get(key, "") for key in ("pid", "http", "id", "version")}
        bad = [key for key, item in fields.items() if not isinstance(item, str)]
        if bad:
            raise LeaderInfoError(f"the znode's {', '.join(bad)} must be strings")
        return cls(**fields)


def _check_pid(pid: object) -> None:
    if not isinstance(pid, str):
        raise LeaderInfoError(f"pid {pid!r} is not a string")
    try:
        upid = UPID.parse(pid)
    except InvalidUPIDError as exc:
        raise LeaderInfoError(f"pid: {exc}") from None
    if not upid.id or not upid.host or upid.port == 0:
        raise LeaderInfoError(f"pid {pid!r} needs an id, a host and a non-zero port")


def _check_http(http: object) -> None:
    if not isinstance(http, str) or len(http) > 1024:
        raise LeaderInfoError(f"http {http!r} is not a URL string")
    try:
        parts = urlsplit(http)
        port = parts.port
    except ValueError as exc:
        raise LeaderInfoError(f"http {http!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise LeaderInfoError(f"http {http!r} must be http[s]://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise LeaderInfoError(f"http {http!r} must be only http[s]://HOST:PORT")


def sequence_of(name: str) -> int | None:
    """The sequence of a member znode's name (`json.info_0000000042` -> 42), else None."""
    match = _MEMBER.fullmatch(name)
    return int(match.group(1)) if match else None


def members(children: list[str]) -> list[str]:
    """The member znodes among a path's children, oldest (lowest sequence) first."""
    found = [(seq, name) for name in children if (seq := sequence_of(name)) is not None]
    return [name for _, name in sorted(found)]


def leader_member(children: list[str]) -> str | None:
    """The leading member's znode name: the lowest sequence; None when nobody contends."""
    ordered = members(children)
    return ordered[0] if ordered else None
