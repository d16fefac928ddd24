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
    zk: str | None = None,
    zk_session_timeout: float | None = None,
) -> int:
    """Serve until a signal arrives. Raises StoreError / OSError with a clear message when the
    database cannot be opened or the port cannot be bound (the CLI prints them).

    With `zk` (a `zk://HOST:PORT[,...]/PATH` URL; ZkUrlError, a ValueError, when malformed)
    this master contends for leadership there and leads in terms (master/leadership.py):
    the database is opened by each term, so it need not be reachable at start."""
    config = config or MasterConfig()
    ha = None
    store = None if zk is not None else Store.open(default_db_url(db))
    if zk is not None:
        from master.leadership import HighAvailability
        from master.store_open import parse_url
        from protos.zookeeper import DEFAULT_SESSION_TIMEOUT

        parse_url(default_db_url(db))  # a malformed URL fails now, not at the first term
        ha = HighAvailability(zk, default_db_url(db), config,
                              session_timeout=zk_session_timeout or DEFAULT_SESSION_TIMEOUT)
    try:
        address = await libproc.start(host, port, advertise_host=advertise_host,
                                      advertise_port=advertise_port, delegate="master")
    except BaseException:
        if store is not None:
            await store.close()
        raise
    if ha is not None:
        await ha.start()
        pid = libproc.address().with_id("master")
    else:
        assert store is not None
        master = Master(store, config)
        libproc.spawn(master)
        pid = master.pid
    # The cluster's name service lives at the master's address (names@host:port), so
    # services running as tasks can register and find each other with no extra daemon.
    libproc.spawn(NameService(secret=config.secret))
    log.info("master %s serving on http://%s:%s/master/vars", pid, host, address.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    print(f"master {pid} listening on {host}:{address.port}"
          + (f", contending under {zk}" if zk is not None else ""), flush=True)
    await stop.wait()
    log.info("master shutting down")
    if ha is not None:
        await ha.close()
    await libproc.stop()
    if store is not None:
        await store.close()
    return 0
