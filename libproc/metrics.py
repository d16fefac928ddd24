"""Counters and gauges served at /metrics/snapshot (libprocess's metrics, much reduced)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Metrics", "metrics"]


class Metrics:
    """A flat namespace of counters (`inc`) and gauges (functions read at snapshot time)."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, key: str, n: float = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def gauge(self, key: str, fn: Callable[[], float]) -> None:
        self.gauges[key] = fn

    def remove(self, key: str) -> None:
        self.counters.pop(key, None)
        self.gauges.pop(key, None)

    def snapshot(self) -> dict[str, float]:
        out = dict(self.counters)
        for key, fn in list(self.gauges.items()):
            try:
                out[key] = float(fn())
            except Exception:  # a broken gauge must not break the endpoint
                continue
        return dict(sorted(out.items()))


metrics = Metrics()
