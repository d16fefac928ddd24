"""The master's figures for Prometheus: `GET /metrics` on its port (libproc's built-in,
which adds libproc's own counters, `libproc_*` and `master_messages_refused_total`) answers
these too.

`MasterMetrics(master)` is a helper object owned by the `Master` actor. It registers one
collector with `libproc.prometheus` while the actor runs (`install` in initialize, `remove`
in finalize). The collector runs on the event loop's thread at each scrape and only reads
counters the master keeps as things change (never a walk over its tasks), so a scrape costs
the same at 1,000,000 tasks as at none:

    master_tasks{state}                      tasks in each state (database-wide)
    master_tasks_in_memory                   tasks the master holds (not ended + newest ended)
    master_slaves{state}                     active, disconnected, lost, removed
    master_cpus, master_cpus_used            offered by the active slaves, and taken
    master_mem_bytes, master_mem_used_bytes
    master_task_launches_total               tasks sent to slaves
    master_task_endings_total{state}         tasks that reached each terminal state
    master_status_update_seconds             histogram: a status update's receipt until its
                                             acknowledgement (which waits for the commit)
    master_store_batch_seconds               histogram: one database write batch, BEGIN to
                                             COMMIT (observed on the store's writer thread)
    master_<counter>_total                   the counters of /master/vars (status updates,
                                             progress reports, scheduling passes, ...)
    master_gc_tasks_deleted_total            tasks deleted by --task-retention

States are lower case, as the slave's (`state="finished"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from libproc import prometheus
from libproc.prometheus import Families

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["MasterMetrics"]

MIB = 1024.0 * 1024.0
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
# Counters of /master/vars exported under their own names (or by libproc) instead.
_NOT_GENERIC = {"launches", "messages_refused"}


class MasterMetrics:
    """One master's Prometheus collector and histograms (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._histograms = CollectorRegistry(auto_describe=False)  # ours, never the global
        self.status_update_seconds = Histogram(
            "master_status_update_seconds",
            "A status update from its receipt until its acknowledgement (after the commit).",
            buckets=_LATENCY_BUCKETS, registry=self._histograms)
        self.store_batch_seconds = Histogram(
            "master_store_batch_seconds", "One database write batch, BEGIN to COMMIT.",
            buckets=_LATENCY_BUCKETS, registry=self._histograms)

    def install(self) -> None:
        prometheus.add_collector(f"master:{self.master.id}", self.collect)

    def remove(self) -> None:
        prometheus.remove_collector(f"master:{self.master.id}")

    def collect(self) -> Iterator[Metric]:
        m = self.master
        fam = Families()
        for state, n in m._index.counts.items():
            fam.gauge("master_tasks", "Tasks in each state.", n, state=state.lower())
        fam.gauge("master_tasks_in_memory", "Tasks the master holds in memory.", len(m.tasks))
        for state, n in m._slave_counts().items():
            fam.gauge("master_slaves", "Slaves in each state.", n, state=state)
        active = [s for s in m.slaves.values() if s.state == "active"]
        fam.gauge("master_cpus", "CPUs offered by the active slaves.", sum(s.cpus for s in active))
        fam.gauge("master_cpus_used", "CPUs of the active slaves taken by tasks.",
                  sum(s.used_cpus for s in active))
        fam.gauge("master_mem_bytes", "Memory offered by the active slaves.",
                  sum(s.mem for s in active) * MIB)
        fam.gauge("master_mem_used_bytes", "Memory of the active slaves taken by tasks.",
                  sum(s.used_mem for s in active) * MIB)
        fam.counter("master_task_launches", "Tasks launched on slaves.",
                    m._counters["launches"])
        for state, n in m._index.endings.items():
            fam.counter("master_task_endings", "Tasks that reached each terminal state.", n,
                        state=state.lower())
        for key, value in m._counters.items():
            if key not in _NOT_GENERIC:
                fam.counter(f"master_{key}", f"The master's {key.replace('_', ' ')}.", value)
        fam.counter("master_gc_tasks_deleted", "Tasks deleted by --task-retention.",
                    m.gc.deleted)
        yield from fam
        yield from self._histograms.collect()
