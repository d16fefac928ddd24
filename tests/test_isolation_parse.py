"""The pure half of isolation: parsing cgroup and /proc files and the arithmetic of limits."""

from __future__ import annotations

import pytest

from slave.isolation.none import group_usage
from slave.isolation.parse import (
    CFS_PERIOD_US,
    cfs_quota_us,
    cpu_shares,
    cpu_weight,
    flat_keyed,
    mountinfo,
    proc_cgroup,
    working_set_bytes,
)
from slave.procfs import CLOCK_TICKS, PAGE_SIZE, ProcStat

MEMORY_STAT_V1 = """cache 1056768
rss 209715200
rss_huge 0
total_cache 1056768
total_rss 209715200
total_inactive_file 524288
total_active_file 532480
hierarchical_memory_limit 67108864
"""


def test_flat_keyed_reads_memory_stat_and_skips_odd_lines() -> None:
    stat = flat_keyed(MEMORY_STAT_V1 + "garbage\nkey not-a-number\n\n  spaced   7  \n")
    assert stat["total_rss"] == 209715200 and stat["total_inactive_file"] == 524288
    assert "garbage" not in stat and "key" not in stat and stat["spaced"] == 7


def test_flat_keyed_reads_v2_events_and_cpu_stat() -> None:
    assert flat_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")[
        "oom_kill"] == 1
    cpu = flat_keyed("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
                     "nr_periods 10\nnr_throttled 7\nthrottled_usec 900\n")
    assert (cpu["usage_usec"], cpu["nr_throttled"]) == (1500000, 7)
    assert flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")["oom_kill"] == 2  # v1


def test_proc_cgroup_splits_v1_controllers_and_finds_the_v2_path() -> None:
    v1, v2 = proc_cgroup("9:name=systemd:/\n8:pids:/a\n2:cpu,cpuacct:/b/c\n"
                         "4:memory:/process_api/x\n0::/unified/path\nbroken line\n")
    assert v1 == {"name=systemd": "/", "pids": "/a", "cpu": "/b/c", "cpuacct": "/b/c",
                  "memory": "/process_api/x"}
    assert v2 == "/unified/path"
    assert proc_cgroup("4:memory:/x\n") == ({"memory": "/x"}, None)


MOUNTINFO = """\
22 1 0:20 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct,cpu rw,relatime - cgroup cgroup rw,cpuacct,cpu
33 30 0:29 /docker/abc /sys/fs/cgroup/memory ro,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
36 30 0:32 / /mnt/with\\040space rw - cgroup cgroup rw,pids
"""


def test_mountinfo_finds_cgroup_mounts_their_controllers_roots_and_modes() -> None:
    mounts = {m.mountpoint: m for m in mountinfo(MOUNTINFO)}
    assert set(mounts) == {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct,cpu",
                           "/sys/fs/cgroup/memory", "/sys/fs/cgroup/systemd",
                           "/sys/fs/cgroup/unified", "/mnt/with space"}
    assert mounts["/sys/fs/cgroup/cpuacct,cpu"].controllers == {"cpu", "cpuacct"}
    assert "name=systemd" not in mounts["/sys/fs/cgroup/systemd"].controllers  # not one
    memory = mounts["/sys/fs/cgroup/memory"]
    assert memory.root == "/docker/abc" and not memory.writable  # mounted ro
    unified = mounts["/sys/fs/cgroup/unified"]
    assert unified.fstype == "cgroup2" and unified.controllers == set() and unified.writable
    assert mounts["/mnt/with space"].controllers == {"pids"}


def test_cpu_shares_weight_and_quota_follow_mesos_and_systemd() -> None:
    assert cpu_shares(1) == 1024 and cpu_shares(0.25) == 256 and cpu_shares(0.0001) == 2
    assert cpu_shares(10_000) == 262_144  # the kernel's maximum
    assert cpu_weight(1) == 39 and cpu_weight(0.0001) == 1 and cpu_weight(10_000) == 10_000
    assert cpu_weight(2) > cpu_weight(1) > cpu_weight(0.5)  # proportional, as shares
    assert cfs_quota_us(0.25) == CFS_PERIOD_US // 4 == 25_000
    assert cfs_quota_us(2.5) == 250_000 and cfs_quota_us(0.001) == 1_000  # the kernel's floor


def test_working_set_leaves_out_inactive_page_cache() -> None:
    assert working_set_bytes(10_000_000, {"total_inactive_file": 4_000_000}) == 6_000_000
    assert working_set_bytes(10_000_000, {"inactive_file": 3_000_000}) == 7_000_000  # v2
    assert working_set_bytes(1_000, {"total_inactive_file": 5_000}) == 0


def stat(pid: int, pgrp: int, utime: int, stime: int, rss_pages: int, cutime: int = 0,
         state: str = "S") -> ProcStat:
    return ProcStat(pid, state, pgrp, utime, stime, cutime, 0, 100, rss_pages)


def test_group_usage_sums_the_groups_processes_and_their_reaped_children() -> None:
    stats = [stat(10, 10, 100, 50, 256, cutime=20), stat(11, 10, 30, 0, 1024),
             stat(12, 99, 5000, 5000, 99999)]  # another group: not counted
    cpu, mem = group_usage(stats, 10) or (0.0, 0.0)
    assert cpu == pytest.approx(200 / CLOCK_TICKS)
    assert mem == pytest.approx(1280 * PAGE_SIZE / (1024 * 1024))
    assert group_usage(stats, 77) is None


def test_usage_at_end_keeps_cumulative_maxima_and_the_last_memory_seen() -> None:
    from slave.isolation import Usage

    last = Usage(2.0, 40.0, 64.0, "cgroups v1", 10.0)
    final = Usage(2.5, 0.0, 50.0, "cgroups v1", 11.0)  # the cgroup emptied: memory now 0
    assert Usage.at_end(last, final) == Usage(2.5, 40.0, 64.0, "cgroups v1", 11.0)
    assert Usage.at_end(None, final) is final
    assert Usage.at_end(last, None) is last
    assert Usage.at_end(None, None) is None


def test_usage_is_reported_again_only_when_it_moved_as_the_api_rounds_it() -> None:
    from slave.isolation import Usage

    last = Usage(1.001, 10.01, 10.01, "proc", 1.0)
    assert Usage(1.004, 10.04, 12.0, "proc", 2.0).reportable_change(last) is False
    assert Usage(1.02, 10.01, 10.01, "proc", 2.0).reportable_change(last) is True
    assert Usage(1.001, 10.2, 10.2, "proc", 2.0).reportable_change(last) is True
    assert last.reportable_change(None) is True
