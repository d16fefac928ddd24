"""`cluster master` and `cluster slave`: options resolved, logging set up, errors made one line.

Precedence of every server option: the flag, then its CLUSTER_* variable (typer reads
those), then libprocess's LIBPROCESS_IP / LIBPROCESS_PORT / LIBPROCESS_ADVERTISE_IP /
LIBPROCESS_ADVERTISE_PORT, then the default (bind 127.0.0.1; master port 5050, slave port
5051). The master and slave modules (aiohttp, SQLAlchemy, protobuf) are imported only
here, inside the functions, so `cluster --help` and the client commands start fast.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import sys
import time
from typing import Any

from cli.client import ClusterError

__all__ = [
    "bind_host",
    "bind_port",
    "configure_logging",
    "detect_resources",
    "serve_master",
    "serve_slave",
    "warn_if_exposed",
]

_LOGFMT_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@()[],+"
)


def _logfmt_value(value: str) -> str:
    if value and all(c in _LOGFMT_SAFE for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\r", "\\r").replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    """One line per record, `key=value` pairs (logfmt): greppable and machine-readable.

    `ts=2026-01-02T03:04:05.678Z level=info proc=master logger=master msg="..."`; an
    exception's traceback goes, escaped, into `exc=` on the same line.
    """

    def __init__(self, proc: str) -> None:
        super().__init__()
        self.proc = proc

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = [
            ("ts", f"{ts}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
            ("proc", self.proc),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{k}={_logfmt_value(str(v))}" for k, v in fields)


def configure_logging(verbose: int, proc: str) -> None:
    """0: warnings and errors only (quiet); 1: INFO; 2 or more: DEBUG. Always to stderr."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(os.environ.get("CLUSTER_LOG_NAME") or proc))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP request is noise unless asked for with -vv.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def bind_host(host: str | None) -> str:
    return host or os.environ.get("LIBPROCESS_IP") or "127.0.0.1"


def bind_port(port: int | None, default: int) -> int:
    if port is not None:
        return port
    value = os.environ.get("LIBPROCESS_PORT", "")
    if value:
        if not value.isdigit() or int(value) > 65535:
            raise ClusterError(f"LIBPROCESS_PORT={value!r} is not a port number (0-65535)")
        return int(value)
    return default


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(what: str, host: str, port: int, secret: str | None) -> None:
    if secret or _is_loopback(host):
        return
    print(
        f"warning: the {what} listens on {host}:{port} without a secret: anyone who can "
        f"reach that port can submit commands to run on your slaves; set --secret or "
        f"CLUSTER_SECRET (and give the same one to every slave and client)",
        file=sys.stderr,
        flush=True,
    )


def _bind_error(what: str, host: str, port: int, exc: OSError) -> ClusterError:
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another master or slave running? pick another --port)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{host} is not an address of this machine (check --host)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need root)"
    else:
        why = exc.strerror or str(exc)
    return ClusterError(f"cannot start the {what} on {host}:{port}: {why}")


def _run(main: Any) -> None:
    try:
        code = asyncio.run(main)
    except KeyboardInterrupt:  # before the signal handlers were installed
        raise SystemExit(130) from None
    if isinstance(code, int) and code:  # e.g. the slave's "cgroups cannot be used here"
        raise SystemExit(code)


def serve_master(
    *,
    host: str,
    port: int,
    db: str,
    zk: str | None = None,
    zk_session_timeout: float | None = None,
    advertise_host: str | None,
    advertise_port: int | None,
    secret: str | None,
    verbose: int,
    heartbeat_interval: float | None,
    slave_timeout: float | None,
    max_completed_tasks: int = 10_000,
    task_retention: float | None = None,
) -> None:
    configure_logging(verbose, "master")
    warn_if_exposed("master", host, port, secret)
    from master.main import run_master
    from master.process import MasterConfig
    from master.store import StoreError

    config = MasterConfig(secret=secret or None, max_completed_tasks=max_completed_tasks,
                          task_retention=task_retention)
    if heartbeat_interval is not None:
        config.heartbeat_interval = heartbeat_interval
    if slave_timeout is not None:
        config.slave_timeout = slave_timeout
    try:
        _run(
            run_master(
                host=host,
                port=port,
                db=db,
                zk=zk,
                zk_session_timeout=zk_session_timeout,
                advertise_host=advertise_host,
                advertise_port=advertise_port,
                config=config,
            )
        )
    except StoreError as exc:
        raise ClusterError(str(exc)) from None  # it names the database and what to do
    except OSError as exc:
        raise _bind_error("master", host, port, exc) from None
    except ValueError as exc:  # e.g. LIBPROCESS_ADVERTISE_PORT=abc, read by libproc
        raise ClusterError(str(exc)) from None


def serve_slave(
    *,
    master: str,
    host: str,
    port: int,
    cpus: float,
    mem: float,
    work_dir: str,
    advertise_host: str | None,
    advertise_port: int | None,
    secret: str | None,
    verbose: int,
    progress_interval: float,
    isolation: str = "auto",
    cpu_limit: str = "soft",
    task_pids_max: int = 1024,
    gc_delay: float = 86400.0,
    gc_disk_watermark: float = 0.9,
    gc_interval: float = 60.0,
) -> None:
    configure_logging(verbose, "slave")
    from protos.zookeeper import is_zk_url, parse_zk_url
    from slave.main import master_upid, run_slave

    if is_zk_url(master):
        try:
            parse_zk_url(master)
        except ValueError as exc:  # ZkUrlError: says what is wrong and shows a good one
            raise ClusterError(f"--master: {exc}") from None
    else:
        try:
            master_upid(master)
        except Exception:  # noqa: BLE001 - InvalidUPIDError, ValueError: report the input
            raise ClusterError(
                f"--master {master!r} is not HOST:PORT (e.g. 127.0.0.1:5050) "
                "or zk://HOST:PORT/PATH"
            ) from None
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as exc:
        raise ClusterError(
            f"cannot create the work directory {work_dir!r}: {exc.strerror or exc}"
        ) from None
    try:
        _run(
            run_slave(
                master=master,
                host=host,
                port=port,
                cpus=cpus,
                mem=mem,
                work_dir=work_dir,
                advertise_host=advertise_host,
                advertise_port=advertise_port,
                secret=secret or None,
                progress_interval=progress_interval,
                isolation=isolation,
                cpu_limit=cpu_limit,
                task_pids_max=task_pids_max,
                gc_delay=gc_delay,
                gc_disk_watermark=gc_disk_watermark,
                gc_interval=gc_interval,
            )
        )
    except OSError as exc:
        raise _bind_error("slave", host, port, exc) from None
    except ValueError as exc:
        raise ClusterError(str(exc)) from None


def detect_resources() -> tuple[float, float]:
    """This machine's cpus and memory (MiB) less a reserve, as Mesos's slave computes them:
    memory minus 1 GiB when there are at least 2 GiB, else half."""
    cpus = float(os.cpu_count() or 1)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        total = 4096.0
    mem = total - 1024 if total >= 2048 else total / 2
    return cpus, float(int(mem))
