"""Giving freed memory back to the system after a burst of tasks has left memory.

A submit or bulk kill of 10,000 tasks allocates some 50 MB for a moment (request bodies,
records, row parameters); Python frees it, but glibc's allocator keeps the freed pages of
its heap unless asked (`malloc_trim`), so the master's RSS would stay at its highest burst
long after the tasks ended. `Trimmer.maybe` asks at most once per `interval` seconds, and
only after `threshold` tasks left memory since the last time: a few milliseconds, never on
a quiet master. Where there is no glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["Trimmer"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


class Trimmer:
    """Counts tasks leaving memory; trims the heap now and then (see the module docstring)."""

    def __init__(self, threshold: int = 5_000, interval: float = 10.0) -> None:
        self.threshold = threshold
        self.interval = interval
        self._trim = _malloc_trim()
        self._left = 0
        self._last = float("-inf")
        self.trims = 0

    def left(self, n: int) -> None:
        self._left += n

    def maybe(self, now: float) -> bool:
        """Trim if enough tasks left memory and the last trim is `interval` old."""
        if self._trim is None or self._left < self.threshold or now - self._last < self.interval:
            return False
        self._left, self._last = 0, now
        self._trim(0)
        self.trims += 1
        return True
