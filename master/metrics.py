"""`GET /metrics` of the master: Prometheus's text exposition format (prometheus-client).

What a scrape reads, all from counters the master keeps as things change (never a walk
over its tasks), so a scrape costs the same at 1,000,000 tasks as at none:

    cluster_tasks{state}                 tasks in each state (the database's, not memory's)
    cluster_slaves{state}                slaves by state: active, disconnected, lost, removed
    cluster_cpus, cluster_mem_bytes      {kind="offered"|"used"} by the active slaves
    cluster_task_launches_total          tasks sent to slaves
    cluster_task_endings_total{state}    tasks that reached each terminal state
    cluster_status_update_seconds        a status update's receipt until its acknowledgement
                                         (which waits for the commit)
    cluster_store_batch_seconds          one database write batch, from BEGIN to COMMIT
    cluster_master_<counter>_total       the /master/vars counters (status updates, ...)
    libproc_<name>_total / libproc_<name>  libproc's counters and gauges (/metrics/snapshot)

Each master has its own registry (never prometheus-client's global one), so several masters
in one process (tests) do not mix. `MasterMetrics` is read in the master's mailbox
(`render`), and the histograms are observed from the loop and the store's writer thread
(prometheus-client's metrics are thread-safe).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from libproc.metrics import metrics as libproc_metrics

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["CONTENT_TYPE", "MasterMetrics", "metric_name"]

#: The text format every Prometheus version reads (our names need none of 1.0.0's UTF-8).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(key: str) -> str:
    """A libproc metrics key (`libproc/messages_sent`) as a Prometheus name."""
    name = _NOT_NAME.sub("_", key).strip("_")
    return name if name and not name[0].isdigit() else f"_{name}"


class _State(Collector):
    """Reads the master's counters at scrape time."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        m = self.master
        tasks = GaugeMetricFamily("cluster_tasks", "Tasks in each state.", labels=["state"])
        for state, n in m._index.counts.items():
            tasks.add_metric([state], n)
        yield tasks
        slaves = GaugeMetricFamily("cluster_slaves", "Slaves in each state.", labels=["state"])
        for state, n in m._slave_counts().items():
            slaves.add_metric([state], n)
        yield slaves
        active = [s for s in m.slaves.values() if s.state == "active"]
        cpus = GaugeMetricFamily("cluster_cpus", "CPUs of the active slaves.", labels=["kind"])
        cpus.add_metric(["offered"], sum(s.cpus for s in active))
        cpus.add_metric(["used"], sum(s.used_cpus for s in active))
        yield cpus
        mem = GaugeMetricFamily("cluster_mem_bytes", "Memory of the active slaves.",
                                labels=["kind"])
        mem.add_metric(["offered"], sum(s.mem for s in active) * 2**20)
        mem.add_metric(["used"], sum(s.used_mem for s in active) * 2**20)
        yield mem
        yield CounterMetricFamily("cluster_task_launches", "Tasks launched on slaves.",
                                  value=m._counters["launches"])
        endings = CounterMetricFamily("cluster_task_endings",
                                      "Tasks that reached each terminal state.",
                                      labels=["state"])
        for state, n in m._index.endings.items():
            endings.add_metric([state], n)
        yield endings
        for key, value in m._counters.items():
            if key != "launches":
                yield CounterMetricFamily(f"cluster_master_{key}", f"Master counter {key}.",
                                          value=value)
        snapshot = libproc_metrics.snapshot()
        for key in sorted(libproc_metrics.counters):
            yield CounterMetricFamily(metric_name(key), f"libproc counter {key}.",
                                      value=libproc_metrics.counters[key])
        for key in sorted(libproc_metrics.gauges):
            if key in snapshot:
                yield GaugeMetricFamily(metric_name(key), f"libproc gauge {key}.",
                                        value=snapshot[key])


class MasterMetrics:
    """The registry behind one master's `/metrics`, and the histograms it observes."""

    def __init__(self, master: Master) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.status_update_seconds = Histogram(
            "cluster_status_update_seconds",
            "A status update from its receipt until its acknowledgement (after the commit).",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.store_batch_seconds = Histogram(
            "cluster_store_batch_seconds", "One database write batch, BEGIN to COMMIT.",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_State(master))

    def render(self) -> bytes:
        """The exposition text (in the master's mailbox: it reads the master's state)."""
        return generate_latest(self.registry)
