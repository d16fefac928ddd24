"""Who may hold an incoming connection, and how long a request may take to arrive.

Pure bookkeeping for the transport (no sockets here), so it is tested without a network.

Admission: each incoming connection holds a slot of its peer's IP address until it closes.
An address may hold at most `max_connections_per_address` slots, and all addresses together
`max_connections` (lowered at start to fit the process's RLIMIT_NOFILE, so that accepting
never fails with EMFILE, which would stall the listener for everyone). Once 3/4 of the
global slots are taken the rest is kept for light addresses (holding fewer than
`LIGHT_ADDRESS` slots), so neither one address nor a few heavy ones can lock out the others.
A connection that never sends a byte (C++ libprocess links by connecting and may say nothing
for hours) is never closed: it only holds its slot.

Memory: the bytes held for incomplete requests are bounded per address
(`max_buffered_per_address`, keep it at least wire.Limits.max_body) and in all
(`max_buffered`): a connection whose request would take more is closed. Otherwise 1,000
connections each holding most of a 16 MiB body would cost 16 GB.

Deadlines: a request that has begun must keep arriving. It is overdue when it is still
incomplete `request_timeout` seconds after its first byte, plus one second for every
`request_min_rate` bytes received since (Apache's mod_reqtimeout rule): a slowloris
trickling a head is closed, a large body on a slow link is not. Time between requests is
never counted. The transport checks deadlines on libproc's Clock, so tests advance them.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = ["ConnectionLimits", "Admission", "overdue", "LIGHT_ADDRESS"]

# Past CROWDED of the global slots, only addresses holding fewer than LIGHT_ADDRESS get one.
CROWDED = 0.75
LIGHT_ADDRESS = 16


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds on incoming connections; pass to `libproc.start(connection_limits=...)`."""

    max_connections: int = 10_000  # all addresses together (lowered to fit RLIMIT_NOFILE)
    max_connections_per_address: int = 1_000
    request_timeout: float = 30.0  # seconds an incomplete request may take ...
    request_min_rate: float = 500.0  # ... plus one second per this many bytes received
    max_buffered_per_address: int = 64 * 1024 * 1024  # bytes of incomplete requests ...
    max_buffered: int = 512 * 1024 * 1024  # ... and of all addresses together

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_address,
               self.max_buffered, self.max_buffered_per_address) < 1:
            raise ValueError(
                f"connection limits must be at least 1, got max_connections="
                f"{self.max_connections}, max_connections_per_address="
                f"{self.max_connections_per_address}, max_buffered={self.max_buffered}, "
                f"max_buffered_per_address={self.max_buffered_per_address}"
            )
        if not (self.request_timeout > 0 and self.request_min_rate > 0):
            raise ValueError(
                f"request_timeout and request_min_rate must be positive, got "
                f"{self.request_timeout} and {self.request_min_rate}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConnectionLimits:
        """The defaults, overridden by LIBPROCESS_MAX_CONNECTIONS,
        LIBPROCESS_MAX_CONNECTIONS_PER_ADDRESS and LIBPROCESS_REQUEST_TIMEOUT (seconds) when
        set; raises ValueError naming the variable when one is not a valid value."""
        default = cls()
        total = _env_int(env, "LIBPROCESS_MAX_CONNECTIONS", default.max_connections)
        per_address = _env_int(env, "LIBPROCESS_MAX_CONNECTIONS_PER_ADDRESS",
                               default.max_connections_per_address)
        timeout = default.request_timeout
        text = env.get("LIBPROCESS_REQUEST_TIMEOUT", "").strip()
        if text:
            try:
                timeout = float(text)
            except ValueError:
                timeout = math.nan
            if not (math.isfinite(timeout) and timeout > 0):
                raise ValueError(f"LIBPROCESS_REQUEST_TIMEOUT={text!r} is not valid: "
                                 "expected a positive number of seconds")
        return replace(default, max_connections=total, max_connections_per_address=per_address,
                       request_timeout=timeout)

    def fit_to_fd_limit(self, soft_limit: int | None = None) -> ConnectionLimits:
        """These limits with `max_connections` lowered so that a quarter of the soft
        RLIMIT_NOFILE (at least 256 descriptors) stays for the rest of the process: outgoing
        connections, files, child pipes. `soft_limit` defaults to the process's own."""
        if soft_limit is None:
            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
            return self
        room = max(64, soft_limit - max(256, soft_limit // 4))
        if room >= self.max_connections:
            return self
        return replace(self, max_connections=room)


def _env_int(env: Mapping[str, str], var: str, default: int) -> int:
    text = env.get(var, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise ValueError(f"{var}={text!r} is not valid: expected a positive integer")
    return int(text)


def overdue(since: float, received: int, now: float, limits: ConnectionLimits) -> bool:
    """True when a request begun at `since` with `received` bytes so far is overdue at `now`."""
    return now - since > limits.request_timeout + received / limits.request_min_rate


class Admission:
    """Slots held per address; `admit()` takes one or says why not, `release()` gives it back.

    Not thread-safe: used on the event loop only.
    """

    __slots__ = ("limits", "total", "_held", "buffered", "_bytes")

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._held: dict[str, int] = {}
        self.buffered = 0  # bytes of incomplete requests, all addresses
        self._bytes: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Take a slot for `address`; None when taken, else why it was refused:
        "per_address" (it holds its maximum) or "global" (no slot left it may have)."""
        limits = self.limits
        held = self._held.get(address, 0)
        if held >= limits.max_connections_per_address:
            return "per_address"
        if self.total >= limits.max_connections:
            return "global"
        if held >= LIGHT_ADDRESS and self.total >= limits.max_connections * CROWDED:
            return "global"
        self._held[address] = held + 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        held = self._held.get(address, 0)
        if held <= 0:
            return
        self.total -= 1
        if held == 1:
            del self._held[address]
        else:
            self._held[address] = held - 1

    def hold(self, address: str, delta: int) -> str | None:
        """Count `delta` more (or, negative, fewer) bytes of incomplete requests held for
        `address`; None while within budget, else "per_address" or "global"."""
        n = self._bytes.get(address, 0) + delta
        if n > 0:
            self._bytes[address] = n
        else:
            self._bytes.pop(address, None)
        self.buffered += delta
        if delta <= 0:
            return None
        if n > self.limits.max_buffered_per_address:
            return "per_address"
        if self.buffered > self.limits.max_buffered:
            return "global"
        return None

    def held(self, address: str) -> int:
        return self._held.get(address, 0)

    def addresses(self) -> int:
        return len(self._held)

    def busiest(self) -> int:
        """The most slots any one address holds (a gauge for /metrics/snapshot)."""
        return max(self._held.values(), default=0)
