"""Prometheus: libproc's counters and gauges in the text exposition format, and a hook for
processes to add their own families.

`GET /metrics` on every libproc port (a built-in of `libproc.http`) answers
`text/plain; version=0.0.4` with, first, libproc's own figures -- every key of
`/metrics/snapshot` -- and then the families of each collector added with
`add_collector(name, collect)`, in the order they were added. libproc knows nothing of what
the collectors measure (a slave's tasks, a master's slaves).

Contract:

- A snapshot key becomes a metric name by replacing each character outside
  `[a-zA-Z0-9_:]` with `_` (`libproc/messages_received` -> `libproc_messages_received`);
  keys counted with `metrics.inc` are counters (exposed with the `_total` suffix), the rest
  gauges. Two keys that come out the same keep the first.
- `collect()` returns an iterable of `prometheus_client` metric families (a
  `CollectorRegistry`'s `collect` will do, as will a `Families`). It runs at every scrape on
  the event loop's thread, outside any process's mailbox: keep it cheap, non-blocking and
  read-only. One that raises is left out of that scrape, logged and counted
  (`libproc/prometheus_collector_errors`); the rest are still served.
- Families of one name from several collectors are merged into one (their samples in turn),
  so two processes of one kind in one OS process, each labelling its samples with its own
  id, still give a valid exposition. A family whose type differs from the first one of its
  name is dropped (and logged once per scrape).
- `libproc.stop()` drops every collector, as it drops health checks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from libproc.metrics import metrics

__all__ = ["CONTENT_TYPE", "Collect", "Families", "add_collector", "clear", "families",
           "metric_name", "remove_collector", "render", "response", "snapshot_families"]

log = logging.getLogger("libproc.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format, as scrapers ask for it."""

Collect = Callable[[], Iterable[Metric]]
_collectors: dict[str, Collect] = {}
_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def add_collector(name: str, collect: Collect) -> None:
    """Serve `collect()`'s families at `/metrics` from now on (see the module docstring).

    A collector of the same `name` is replaced; `remove_collector(name)` drops it."""
    _collectors[name] = collect


def remove_collector(name: str) -> None:
    """Forget the collector `name` (nothing happens if there is none)."""
    _collectors.pop(name, None)


def clear() -> None:
    """Forget every collector (libproc.stop() does this)."""
    _collectors.clear()


def metric_name(key: str) -> str:
    """A valid Prometheus metric name for a snapshot key (pure)."""
    name = _BAD.sub("_", key)
    return f"_{name}" if not name or name[0].isdigit() else name


def snapshot_families(snapshot: Mapping[str, float], counters: Collection[str]) -> list[Metric]:
    """One family per snapshot key: a counter for the keys in `counters`, else a gauge."""
    out: dict[str, Metric] = {}
    for key, value in snapshot.items():
        name = metric_name(key)
        if name.endswith("_total"):  # a counter's family name never ends so
            name = name[: -len("_total")] or name
        if name in out:
            continue
        family: Metric
        if key in counters:
            family = CounterMetricFamily(name, f"libproc counter {key}", value=value)
        else:
            family = GaugeMetricFamily(name, f"libproc gauge {key}", value=value)
        out[name] = family
    return list(out.values())


def families(snapshot: Mapping[str, float], counters: Collection[str]) -> list[Metric]:
    """libproc's families, then every collector's, merged by name (see the docstring)."""
    merged: dict[str, Metric] = {}
    clashes: set[str] = set()

    def take(items: Iterable[Metric]) -> None:
        for family in items:
            first = merged.get(family.name)
            if first is None:
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = list(family.samples)
                merged[family.name] = copy
            elif first.type == family.type:
                first.samples.extend(family.samples)
            else:
                clashes.add(family.name)

    take(snapshot_families(snapshot, counters))
    for name, collect in list(_collectors.items()):
        try:
            take(list(collect()))  # all or nothing: a collector that raises adds nothing
        except Exception:  # noqa: BLE001 - one broken collector must not break the scrape
            metrics.inc("libproc/prometheus_collector_errors")
            log.exception("metrics collector %r raised; left out of this scrape", name)
    if clashes:
        log.warning("metric families of one name but another type dropped: %s",
                    ", ".join(sorted(clashes)))
    return list(merged.values())


class _Families:
    """Adapts a list of families to what `generate_latest` reads."""

    def __init__(self, items: list[Metric]) -> None:
        self.items = items

    def collect(self) -> list[Metric]:
        return self.items


def render(snapshot: Mapping[str, float], counters: Collection[str]) -> bytes:
    """The text exposition of `families(snapshot, counters)`."""
    return generate_latest(_Families(families(snapshot, counters)))


def response(snapshot: Mapping[str, float], counters: Collection[str]) -> web.Response:
    """`render` as an aiohttp response with the exposition's content type."""
    return web.Response(body=render(snapshot, counters), headers={"Content-Type": CONTENT_TYPE})


class Families:
    """A collector's families built by name, for `add_collector(name, lambda: ...)`.

    `fam.gauge("slave_tasks", "Tasks by state.", 3, state="running")` adds one sample to the
    family `slave_tasks` (created, with its help text, at its first sample). `counter` names
    the family without `_total` (its samples get it). Iterating yields the families in the
    order first used.
    """

    def __init__(self, **labels: str) -> None:
        """`labels` are put on every sample (e.g. the process's id)."""
        self._labels = labels
        self._families: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add("gauge", name, name, doc, value, labels)

    def counter(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add("counter", name, f"{name}_total", doc, value, labels)

    def _add(self, kind: str, name: str, sample: str, doc: str, value: float,
             labels: dict[str, str]) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Metric(name, doc, kind)
        family.add_sample(sample, {**self._labels, **labels}, float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._families.values()))
