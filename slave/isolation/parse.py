"""Pure parsing of cgroup and /proc files, and the arithmetic of limits: no file I/O here.

Each function takes a file's text (as the kernel renders it) and returns plain values, so
every odd case (a missing key, "max", trailing blanks) is unit-tested without a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CFS_PERIOD_US", "Mount", "cfs_quota_us", "cpu_shares", "cpu_weight", "flat_keyed",
    "mountinfo", "proc_cgroup", "working_set_bytes",
]

CFS_PERIOD_US = 100_000
"""The CFS period used for hard CPU limits (Mesos's and the kernel's default, 100 ms)."""
MIN_CFS_QUOTA_US = 1_000
"""The kernel refuses a quota below 1 ms."""
MIB = 1024 * 1024


def flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, memory.events, cpu.stat, pids.events, cpuacct.stat,
    memory.oom_control) -> {key: int}. Lines that are not `key integer` are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """/proc/<pid>/cgroup -> ({v1 controller: path}, the v2 path or None).

    `4:memory:/a/b` gives memory -> /a/b; `1:cpu,cpuacct:/x` gives both; `0::/y` is v2;
    named hierarchies (`name=systemd`) are kept under their name."""
    v1: dict[str, str] = {}
    v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
            continue
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v1, v2


@dataclass(frozen=True)
class Mount:
    """One cgroup mount from /proc/self/mountinfo."""

    root: str  # the hierarchy's path that is mounted there ("/" unless bind-mounted)
    mountpoint: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    controllers: frozenset[str]  # v1: those of the super options; v2: empty
    writable: bool  # mounted rw


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040...)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts in /proc/self/mountinfo's text."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-")
        except ValueError:
            continue
        if dash < 6 or len(fields) < dash + 4:
            continue
        fstype, super_options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype not in ("cgroup", "cgroup2"):
            continue
        options = fields[5].split(",")
        known = {"rw", "ro"} | {o for o in super_options if "=" in o}
        controllers = frozenset(o for o in super_options if o not in known) \
            if fstype == "cgroup" else frozenset()
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), fstype,
                            controllers, "rw" in options and "ro" not in super_options))
    return mounts


def cpu_shares(cpus: float) -> int:
    """cgroup v1 cpu.shares for `cpus`: 1024 per CPU (as Mesos), at least the kernel's 2."""
    return max(2, min(262_144, int(cpus * 1024)))


def cpu_weight(cpus: float) -> int:
    """cgroup v2 cpu.weight for `cpus`: the shares mapped onto 1..10000 as systemd and runc
    do (1024 shares -> 39), so v1 and v2 slaves weigh tasks alike."""
    shares = cpu_shares(cpus)
    return max(1, min(10_000, 1 + ((shares - 2) * 9_999) // 262_142))


def cfs_quota_us(cpus: float, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota (µs per period) that caps a task at `cpus` CPUs (Mesos's cgroups_enable_cfs)."""
    return max(MIN_CFS_QUOTA_US, int(cpus * period_us))


def working_set_bytes(usage: int, stat: dict[str, int]) -> int:
    """Memory in use less what the kernel can drop at once (inactive page cache), as the
    kubelet's working set: v1 stat has total_inactive_file, v2 inactive_file."""
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return max(0, usage - inactive)
