"""Run a master in this OS process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import libproc
from libproc.names import NameService
from master.process import Master, MasterConfig
from master.store import Store

__all__ = ["run_master", "default_db_url"]

log = logging.getLogger("master")


def default_db_url(path: str) -> str:
    """A path becomes an SQLite URL; anything with '://' is taken as an SQLAlchemy URL."""
    return path if "://" in path else f"sqlite:///{path}"


async def run_master(
    *,
    host: str = "127.0.0.1",
    port: int = 5050,
    db: str = "cluster.db",
    advertise_host: str | None = None,
    advertise_port: int | None = None,
    config: MasterConfig | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Serve until a signal arrives. Raises StoreError / OSError with a clear message when the
    database cannot be opened or the port cannot be bound (the CLI prints them)."""
    store = Store.open(default_db_url(db))
    try:
        address = await libproc.start(host, port, advertise_host=advertise_host,
                                      advertise_port=advertise_port, delegate="master")
    except BaseException:
        await store.close()
        raise
    master = Master(store, config)
    libproc.spawn(master)
    # The cluster's name service lives at the master's address (names@host:port), so
    # services running as tasks can register and find each other with no extra daemon.
    libproc.spawn(NameService(secret=master.config.secret))
    log.info("master %s serving on http://%s:%s/master/vars", master.pid, host, address.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    print(f"master {master.pid} listening on {host}:{address.port}", flush=True)
    await stop.wait()
    log.info("master shutting down")
    await libproc.stop()
    await store.close()
    return 0
