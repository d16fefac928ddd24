"""Run a slave in this OS process until SIGINT/SIGTERM (which kills its tasks cleanly)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import libproc
from libproc import UPID
from protos.zookeeper import is_zk_url
from slave.gc import DAY, GcConfig
from slave.isolation import DEFAULT_TASK_PIDS_MAX, IsolationError, create_isolator
from slave.leader import LeaderFollower
from slave.process import Slave, SlaveConfig

__all__ = ["run_slave", "master_upid"]

log = logging.getLogger("slave")

FD_LIMIT = 65536
"""Soft RLIMIT_NOFILE the slave asks for (within the hard limit): each running task holds two
fds (its stdout, tailed for progress, and its pidfd), so 1,024 would cap it at ~500 tasks."""


def raise_fd_limit(want: int = FD_LIMIT) -> int:
    """Raise the soft open-files limit towards `want` (never above the hard limit, never
    lower than it is); return the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft,
                        target, exc)
    return soft


def master_upid(master: str) -> UPID:
    """`HOST:PORT` (or a full `master@HOST:PORT` UPID) -> the master's UPID."""
    text = master.strip()
    if text.startswith("http://"):
        text = text[len("http://"):].rstrip("/")
    if "@" not in text:
        text = f"master@{text}"
    return UPID.parse(text)


async def run_slave(
    *,
    master: str,
    host: str = "127.0.0.1",
    port: int = 5051,
    cpus: float = 4.0,
    mem: float = 4096.0,
    work_dir: str = "slave-work",
    advertise_host: str | None = None,
    advertise_port: int | None = None,
    secret: str | None = None,
    progress_interval: float = 1.0,
    isolation: str = "auto",
    cpu_limit: str = "soft",
    task_pids_max: int = DEFAULT_TASK_PIDS_MAX,
    gc_delay: float = DAY,
    gc_disk_watermark: float = 0.9,
    gc_interval: float = 60.0,
) -> int:
    """Run until SIGINT/SIGTERM; 0, or 2 (one clear line on stderr) when the isolation asked
    for cannot be had here. `master` is `HOST:PORT`, or `zk://HOST:PORT[,...]/PATH` to follow
    whichever master leads there (slave/leader.py; ZkUrlError, a ValueError, if malformed)."""
    follower = LeaderFollower(master) if is_zk_url(master) else None
    master_pid = master_upid(master) if follower is None else None
    raise_fd_limit()
    work_path = Path(work_dir).absolute()
    try:
        isolator, why = create_isolator(isolation, str(work_path), cpu_limit=cpu_limit,
                                        pids_max=task_pids_max)
    except (IsolationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if why:
        log.warning("isolation: cgroups cannot be used here, so tasks run without isolation "
                    "(cpus and mem are bookkeeping only): %s", why)
    log.info("isolation: %s", " ".join(f"{k}={v}" for k, v in isolator.describe().items()))
    await libproc.start(host, port, advertise_host=advertise_host,
                        advertise_port=advertise_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if follower is not None:
        follower.start()
        print(f"slave waiting for a leading master under {follower.url}", flush=True)
        leader = await follower.first_leader(stop)
        if leader is None:  # stopped while waiting
            isolator.close()
            await follower.close()
            await libproc.stop()
            return 0
        master_pid = leader.upid
    assert master_pid is not None
    config = SlaveConfig(master=master_pid, work_dir=work_path, cpus=cpus,
                         mem=mem, secret=secret, progress_interval=progress_interval,
                         isolation=isolation, cpu_limit=cpu_limit, task_pids_max=task_pids_max,
                         isolator=isolator,
                         gc=GcConfig(delay=gc_delay, watermark=gc_disk_watermark,
                                     interval=gc_interval))
    slave = Slave(config)
    slave.registration.follower = follower
    libproc.spawn(slave)
    if follower is not None:
        follower.follow(slave)
    print(f"slave {slave.pid} registering with {master_pid}", flush=True)
    stopped = asyncio.ensure_future(_wait(slave.stopped()))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not stopped.done():
        log.info("slave shutting down: killing its tasks")
        await libproc.dispatch(slave.pid, "shutdown")
        await asyncio.sleep(0.2)  # let UnregisterSlaveMessage leave
    waiter.cancel()
    if follower is not None:
        await follower.close()
    await libproc.stop()
    return 0


async def _wait(f: libproc.Future[bool]) -> bool:
    return await f
