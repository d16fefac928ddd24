"""The slave's figures for Prometheus: `GET /metrics` on its port (libproc's built-in, which
adds libproc's own message counters) answers these too.

`SlaveMetrics(slave)` is a helper object owned by the `Slave` actor. It registers one
collector with `libproc.prometheus` while the actor runs (`install` in initialize, `remove`
in finalize); the collector runs on the event loop's thread at each scrape and only reads the
actor's state, in time proportional to the running tasks. Every sample carries
`slave="<process id>"` (`slave(1)`), so several slaves in one OS process stay apart.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from libproc import prometheus
from libproc.prometheus import Families
from slave.executor import TaskResult

if TYPE_CHECKING:
    from slave.process import Slave

__all__ = ["SlaveMetrics"]

MIB = 1024.0 * 1024.0


class SlaveMetrics:
    """One slave's Prometheus collector (see the module docstring)."""

    def __init__(self, slave: Slave) -> None:
        self.slave = slave
        self._ended_cpu_seconds = 0.0  # of the tasks that ended here, from their final usage

    def install(self) -> None:
        prometheus.add_collector(f"slave:{self.slave.id}", self.collect)

    def remove(self) -> None:
        prometheus.remove_collector(f"slave:{self.slave.id}")

    def ended(self, result: TaskResult) -> None:
        """A task ended: its final CPU time joins the total."""
        if result.usage is not None:
            self._ended_cpu_seconds += result.usage.cpu_seconds

    def collect(self) -> Families:
        s = self.slave
        fam = Families(slave=s.id)
        fam.gauge("slave_registered", "1 while registered with the master, else 0.",
                  1 if s.mode == "registered" else 0)
        fam.gauge("slave_uptime_seconds", "Seconds since this slave started.",
                  time.time() - s._started)
        self._resources(fam)
        if s.executor is not None:
            self._tasks(fam)
        counters = s._counters
        fam.counter("slave_registrations", "Registration attempts sent to the master.",
                    counters["registrations"])
        fam.counter("slave_launch_messages", "Launch messages taken from the master.",
                    counters["launches_received"])
        fam.counter("slave_commands_refused", "Messages refused: not from our master, or "
                    "not signed by the current session.", counters["commands_refused"])
        fam.counter("slave_progress_reports_sent", "Progress reports sent to the master.",
                    counters["progress_reports_sent"])
        fam.counter("slave_status_updates_sent", "Status updates sent, re-sends included.",
                    counters["status_updates_sent"])
        fam.counter("slave_status_update_resends", "Status updates sent again because the "
                    "master had not acknowledged them.", counters["status_updates_resent"])
        fam.gauge("slave_status_updates_unacknowledged", "Status updates the master has not "
                  "acknowledged yet.", len(s.unacked))
        self._gc(fam)
        return fam

    def _resources(self, fam: Families) -> None:
        s = self.slave
        cpus_used = sum(i.resources.cpus for i in s.tasks.values() if i.HasField("resources"))
        mem_used = sum(i.resources.mem for i in s.tasks.values() if i.HasField("resources"))
        fam.gauge("slave_cpus", "CPUs this slave offers.", s.config.cpus)
        fam.gauge("slave_cpus_used", "CPUs of the tasks running here.", cpus_used)
        fam.gauge("slave_mem_bytes", "Memory this slave offers.", s.config.mem * MIB)
        fam.gauge("slave_mem_used_bytes", "Memory of the tasks running here.", mem_used * MIB)

    def _tasks(self, fam: Families) -> None:
        executor = self.slave.executor
        assert executor is not None
        running = executor.running()
        staging = sum(1 for t in running if t.pid is None)
        fam.gauge("slave_tasks", "Tasks here by state: staging (waiting to be forked) or "
                  "running.", staging, state="staging")
        fam.gauge("slave_tasks", "", len(running) - staging, state="running")
        counts = executor.counters()
        fam.counter("slave_task_launches", "Tasks launched here.", counts["tasks_launched"])
        for state in ("finished", "failed", "killed"):
            fam.counter("slave_task_endings", "Tasks that ended here, by terminal state.",
                        counts[f"tasks_{state}"], state=state)
        fam.counter("slave_task_limit_violations", "Tasks ended FAILED for going over a "
                    "memory or process limit.", counts["tasks_limit_exceeded"])
        iso = executor.isolator
        fam.gauge("slave_isolation_info", "How tasks are isolated here (always 1).", 1,
                  mode=iso.mode, cgroup_version=iso.version or "-", cpu_limit=iso.cpu_limit)
        fam.gauge("slave_task_pids_max", "Processes one task may have (0: no limit).",
                  iso.pids_max)
        cpu, mem = 0.0, 0.0
        for task in executor.monitor():
            usage = task.get("usage") or {}
            cpu += float(usage.get("cpu_seconds", 0.0))
            mem += float(usage.get("mem_mib", 0.0))
        fam.counter("slave_task_cpu_seconds", "CPU seconds (user + system) used by the tasks "
                    "here: ended ones and the running ones' last sample.",
                    self._ended_cpu_seconds + cpu)
        fam.gauge("slave_task_memory_bytes", "Memory the running tasks use (working sets, "
                  "last sample).", mem * MIB)

    def _gc(self, fam: Families) -> None:
        gc = self.slave.gc
        if gc is None:
            return
        fam.gauge("slave_gc_sandboxes_pending", "Ended tasks' sandboxes waiting to be "
                  "collected.", len(gc.queue))
        for reason in ("delay", "disk"):
            fam.counter("slave_gc_sandboxes_collected", "Sandboxes removed, by reason: "
                        "--gc-delay after their end, or early for disk space.",
                        gc.counts[f"gc_collected_by_{reason}"], reason=reason)
        fam.counter("slave_gc_bytes_collected", "Disk bytes freed by removing sandboxes.",
                    gc.counts["gc_bytes_collected"])
        fam.counter("slave_gc_removal_failures", "Sandboxes that could not be (wholly) "
                    "removed.", gc.counts["gc_removals_failed"])
        fam.counter("slave_gc_passes", "Collection passes run.", gc.counts["gc_passes"])
        if gc.last_pass_at is not None:
            fam.gauge("slave_gc_last_pass_timestamp_seconds", "When the last pass ended "
                      "(Unix time).", gc.last_pass_at)
        fam.gauge("slave_gc_last_pass_duration_seconds", "How long the last pass took.",
                  gc.last_pass_secs)
        if gc.disk is not None:
            fam.gauge("slave_gc_disk_usage_ratio", "How full the work dir's file system is "
                      "(the larger of blocks and inodes), at the last pass.", gc.disk.fraction)
        fam.gauge("slave_gc_disk_watermark_ratio", "--gc-disk-watermark.", gc.config.watermark)
        fam.gauge("slave_gc_delay_seconds", "--gc-delay.", gc.config.delay)
