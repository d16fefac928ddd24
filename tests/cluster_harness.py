"""A real cluster for integration tests: a master and slaves as separate OS processes.

Everything runs on 127.0.0.1 with free ports, a temporary work directory per slave and a
temporary SQLite file for the master. Each child's stdout and stderr go to files, so a
failing test can show what the master and slaves logged (`Cluster.logs()`).

Contract:
- Every child is started in its own session and is always ended by `Cluster.close()`
  (SIGTERM, then SIGKILL after a grace period), which the `cluster` fixtures call in a
  `finally`; should the harness die without clean-up, the kernel SIGKILLs its children
  (PR_SET_PDEATHSIG on Linux). Task process groups left behind by a SIGKILLed slave are
  killed too (their journal proves their pgids; `slave.orphans.kill_orphans` reads it), and
  so are their cgroups (`slave.isolation`'s `recover`).
- Every wait is bounded; `wait_for` raises AssertionError naming what it waited for and
  the last value it saw.
- `MasterClient` is synchronous (urllib) and speaks only the master's public HTTP API.

Used by tests/test_cluster_*.py (import it as `cluster_harness`, pytest puts tests/ on
sys.path) and by benchmarks/bench_cluster.py (as `tests.cluster_harness`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

__all__ = [
    "REPO", "Child", "Cluster", "ConnectionRecorder", "HttpError", "MasterClient", "free_port",
    "wait_for", "cluster", "TERMINAL",
]

REPO = Path(__file__).resolve().parents[1]
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED", "LOST"})
T = TypeVar("T")

_MASTER_CODE = """\
import asyncio, logging, sys
logging.basicConfig(level=logging.{level}, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
from master.main import run_master
from master.process import MasterConfig
config = MasterConfig(heartbeat_interval={heartbeat!r}, slave_timeout={slave_timeout!r},
                      staging_timeout={staging_timeout!r}, secret={secret!r})
{runner}
"""

_MASTER_RUN = ("main = run_master(host='127.0.0.1', port={port!r}, db={db!r}, config=config,\n"
               "                  zk={zk!r}, zk_session_timeout={zk_timeout!r})\n"
               "{tail}")

_SLAVE_CODE = """\
import asyncio, logging, sys
logging.basicConfig(level=logging.{level}, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
from slave.main import run_slave
main = run_slave(master={master!r}, host='127.0.0.1', port={port!r}, cpus={cpus!r}, mem={mem!r},
                 work_dir={work_dir!r}, progress_interval={progress_interval!r},
                 secret={secret!r}, {extra})
{runner}
"""

_RUN = "sys.exit(asyncio.run(main))"

_PROFILED = """\
import cProfile
profiler = cProfile.Profile()
profiler.enable()
try:
    code = asyncio.run(main)
finally:
    profiler.disable()
    profiler.dump_stats({profile!r})
sys.exit(code)
"""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
             what: str = "condition", show: Callable[[], Any] | None = None) -> T:
    """Poll `predicate` until it returns something truthy; return that value.

    Exceptions from `predicate` (e.g. a connection refused while a child starts) count as
    "not yet". After `timeout` seconds raises AssertionError with `what`, the last value or
    exception, and `show()` if given (e.g. the task list), so the failure explains itself.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        if time.monotonic() >= deadline:
            extra = ""
            if show is not None:
                try:
                    extra = f"\n  state: {show()!r}"
                except Exception as exc:  # noqa: BLE001
                    extra = f"\n  state: unavailable ({exc!r})"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                 f"last value: {last!r}{extra}")
        time.sleep(interval)


class ConnectionRecorder:
    """Listen on a port in place of a dead master and record when peers connect.

    Each accepted connection is read briefly and closed, so a slave sees its message
    dropped, as with a master that is not up yet. `times` are `time.monotonic()` values.
    Use as a context manager; the port is free again on exit.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.times: list[float] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.times.append(time.monotonic())
            with conn:
                conn.settimeout(0.05)
                try:
                    conn.recv(65536)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close()

    def __enter__(self) -> ConnectionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpError(Exception):
    """A non-2xx answer; `status` and the decoded JSON `body` (or raw text)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class MasterClient:
    """The master's HTTP API, synchronously. Non-2xx answers raise HttpError."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 secret: str | None = None) -> None:
        self.base = f"http://{host}:{port}"
        self.timeout = timeout
        self.secret = secret

    def request(self, method: str, path: str, body: Any = None, *,
                raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body bytes) for any status; raises only on network errors."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.secret:
            req.add_header("Authorization", f"Bearer {self.secret}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def _json(self, method: str, path: str, body: Any = None, *,
              raw: bytes | None = None) -> Any:
        status, _, data = self.request(method, path, body, raw=raw)
        try:
            decoded: Any = json.loads(data) if data else None
        except ValueError:
            decoded = data.decode("utf-8", "replace")
        if not 200 <= status < 300:
            raise HttpError(status, decoded)
        return decoded

    def submit(self, spec: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """POST /master/tasks (one spec or a list); the new ids."""
        ids = self._json("POST", "/master/tasks", spec)["ids"]
        assert isinstance(ids, list)
        return [str(i) for i in ids]

    def submit_one(self, command: str, **fields: Any) -> str:
        (tid,) = self.submit({"command": command, **fields})
        return tid

    def tasks(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every task (of `state`), oldest first: the paged listing followed to its end."""
        path: str | None = "/master/tasks?limit=10000" + (f"&state={state}" if state else "")
        tasks: list[dict[str, Any]] = []
        while path is not None:
            page = self._json("GET", path)
            tasks += page["tasks"]
            path = page["next"]
        return tasks

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self._json("GET", f"/master/tasks/{task_id}")
        return task

    def kill(self, task_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("POST", f"/master/tasks/{task_id}/kill")
        return answer

    def logs(self, task_id: str, stream: str = "stdout", offset: int = 0) -> bytes:
        status, _, data = self.request(
            "GET", f"/master/tasks/{task_id}/logs?stream={stream}&offset={offset}")
        if status != 200:
            raise HttpError(status, data.decode("utf-8", "replace"))
        return data

    def slaves(self) -> list[dict[str, Any]]:
        slaves: list[dict[str, Any]] = self._json("GET", "/master/slaves")["slaves"]
        return slaves

    def vars(self, path: str = "/master/vars") -> dict[str, str]:
        """`key value` lines as a dict (values are strings)."""
        status, _, data = self.request("GET", path)
        if status != 200:
            raise HttpError(status, data.decode("utf-8", "replace"))
        out = {}
        for line in data.decode().splitlines():
            key, _, value = line.partition(" ")
            out[key] = value
        return out

    def get_json(self, path: str) -> Any:
        return self._json("GET", path)

    # -- waits ---------------------------------------------------------------------------

    def wait_task(self, task_id: str, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 10.0, what: str = "") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if predicate(task) else None
        return wait_for(check, timeout, what=what or f"task {task_id}",
                        show=lambda: self.task(task_id))

    def wait_state(self, task_id: str, states: str | set[str] | frozenset[str],
                   timeout: float = 10.0) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else set(states)
        return self.wait_task(task_id, lambda t: t["state"] in wanted, timeout,
                              what=f"task {task_id} to be {'/'.join(sorted(wanted))}")

    def wait_terminal(self, task_ids: list[str],
                      timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        """Every task in `task_ids` terminal (one GET /master/tasks per poll); {id: task}."""
        wanted = set(task_ids)

        def check() -> dict[str, dict[str, Any]] | None:
            tasks = {t["id"]: t for t in self.tasks() if t["id"] in wanted}
            done = all(t["state"] in TERMINAL for t in tasks.values())
            return tasks if done and len(tasks) == len(wanted) else None

        def show() -> Any:
            return [(t["id"], t["state"], t["message"]) for t in self.tasks()
                    if t["id"] in wanted and t["state"] not in TERMINAL][:10]

        return wait_for(check, timeout, interval=0.1,
                        what=f"{len(wanted)} task(s) to end", show=show)

    def wait_slaves(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            active = [s for s in self.slaves() if s["state"] == "active"]
            return active if len(active) >= n else None
        return wait_for(check, timeout, interval=0.1, what=f"{n} active slave(s)",
                        show=self.slaves)


@dataclass
class Child:
    """One OS process of the cluster, with its output files."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    work_dir: Path | None = None
    _shown: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, SIGKILL after `grace` seconds; the exit status (None if it never died)."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                return self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL, as a crash would; the exit status."""
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            return self.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            return None

    def rss_kib(self) -> int:
        """VmRSS of the process from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_secs(self) -> float:
        """User + system CPU seconds the process has used (from /proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self, since_mark: bool = False) -> str:
        """Its stderr (the log) and stdout; with `since_mark`, only what is new since `mark()`."""
        err = _read(self.stderr_path)
        out = _read(self.stdout_path)
        if since_mark:
            err = err[self._shown:]
        return f"--- {self.name} (pid {self.pid}, port {self.port}) stdout:\n{out}" \
               f"--- {self.name} stderr:\n{err[-20000:]}"

    def mark(self) -> None:
        self._shown = len(_read(self.stderr_path))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL me when the process that started me dies, so a
    harness killed without running its clean-up (e.g. by `timeout`) leaves no cluster."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the fixtures' clean-up still applies
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass
class Cluster:
    """A master and slaves under `root`; `close()` ends them all."""

    root: Path
    heartbeat_interval: float = 0.2
    slave_timeout: float = 2.0
    staging_timeout: float = 60.0
    progress_interval: float = 0.2
    log_level: str = "INFO"
    secret: str | None = None  # the cluster's --secret, given to the master and slaves
    master: Child | None = None
    master_port: int = 0
    db: Path = field(init=False)
    slaves: list[Child] = field(default_factory=list)
    _children: list[Child] = field(default_factory=list)
    _starts: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "master.db"

    @property
    def api(self) -> MasterClient:
        assert self.master_port, "start the master first"
        return MasterClient(self.master_port, secret=self.secret)

    def _spawn(self, name: str, code: str, port: int, work_dir: Path | None = None) -> Child:
        self._starts += 1
        stem = f"{self._starts:02d}-{name}"
        out_path = self.root / f"{stem}.stdout"
        err_path = self.root / f"{stem}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBPROCESS_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO), env=env,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(name, popen, port, out_path, err_path, work_dir)
        self._children.append(child)
        return child

    def start_master(self, *, port: int | None = None, db: Path | str | None = None,
                     wait: bool = True, profile: Path | None = None, zk: str | None = None,
                     zk_session_timeout: float | None = None) -> Child:
        """Start a master (same port as the last one when `port` is None and there was
        one, else a free port) on `db` (a path or an SQLAlchemy URL; default: this
        cluster's SQLite file); wait until it answers /master/vars. With `profile`, it runs
        under cProfile and dumps its stats there when SIGTERM stops it. With `zk`, it is
        one of several masters contending there (`cluster master --zk`)."""
        self.master_port = port or self.master_port or free_port()
        db_path = str(db or self.db)
        tail = _PROFILED.format(profile=str(profile)) if profile else _RUN
        runner = _MASTER_RUN.format(port=self.master_port, db=db_path, tail=tail, zk=zk,
                                    zk_timeout=zk_session_timeout)
        code = _MASTER_CODE.format(level=self.log_level, heartbeat=self.heartbeat_interval,
                                   slave_timeout=self.slave_timeout,
                                   staging_timeout=self.staging_timeout, runner=runner,
                                   secret=self.secret)
        self.master = self._spawn("master", code, self.master_port)
        if wait:
            self.wait_master()
        return self.master

    def wait_master(self, timeout: float = 15.0) -> None:
        master = self.master
        assert master is not None

        def up() -> bool:
            if not master.alive():
                raise AssertionError(f"master exited with {master.popen.returncode}:\n"
                                     f"{master.output()}")
            return "version" in self.api.vars()

        try:
            wait_for(up, timeout, interval=0.05, what="the master to answer /master/vars")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{master.output()}") from None

    def start_slave(self, *, cpus: float = 4.0, mem: float = 4096.0,
                    progress_interval: float | None = None, wait: bool = True,
                    profile: Path | None = None, work_dir: Path | None = None,
                    secret: str | None = None, master: str | None = None,
                    **options: Any) -> Child:
        """Start a slave with a fresh work dir (or `work_dir`, e.g. a killed slave's); with
        `wait`, until the master lists it active. `options` go to `run_slave` (isolation,
        cpu_limit, task_pids_max).

        `secret` defaults to the cluster's; `master` (`HOST:PORT` or `zk://…`) to the last
        master started.

        With `profile`, it runs under cProfile and dumps its stats there when stopped.
        """
        assert self.master_port or master, "start the master first"
        n = len(self.slaves) + 1
        port = free_port()
        work_dir = work_dir or self.root / f"slave{n}"
        code = _SLAVE_CODE.format(
            level=self.log_level, master=master or f"127.0.0.1:{self.master_port}", port=port,
            cpus=float(cpus), mem=float(mem), work_dir=str(work_dir),
            progress_interval=progress_interval or self.progress_interval,
            secret=secret if secret is not None else self.secret,
            extra=", ".join(f"{k}={v!r}" for k, v in options.items()),
            runner=_PROFILED.format(profile=str(profile)) if profile else _RUN)
        child = self._spawn(f"slave{n}", code, port, work_dir)
        self.slaves.append(child)
        if wait:
            before = sum(1 for s in self.slaves[:-1] if s.alive())
            try:
                self.api.wait_slaves(before + 1, timeout=15.0)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{child.output()}") from None
        return child

    def slave_id_of(self, child: Child) -> str:
        """The master's id for the slave `child` (matched by port)."""
        for s in self.api.slaves():
            if s["pid"].endswith(f":{child.port}") and s["state"] == "active":
                return str(s["id"])
        raise AssertionError(f"the master lists no active slave on port {child.port}")

    def slave_on(self, slave_id: str) -> Child:
        """The slave child the master calls `slave_id`."""
        for s in self.api.slaves():
            if s["id"] == slave_id:
                port = int(s["pid"].rsplit(":", 1)[1])
                for child in self.slaves:
                    if child.port == port:
                        return child
        raise AssertionError(f"no slave child for slave id {slave_id}")

    def mark(self) -> None:
        for child in self._children:
            child.mark()

    def logs(self, since_mark: bool = False) -> str:
        return "\n".join(c.output(since_mark) for c in self._children)

    def close(self) -> None:
        """Stop every child (slaves first, so they can unregister), then kill orphaned tasks."""
        for child in reversed(self._children):
            if child is not self.master:
                child.stop(grace=5.0)
        for child in self._children:
            child.stop(grace=5.0)
        for child in self._children:
            if child.work_dir is not None and child.work_dir.exists():
                _kill_orphans(child.work_dir)


def _kill_orphans(work_dir: Path) -> None:
    """Kill tasks that outlived their slave (e.g. one killed with SIGKILL): their cgroups,
    then their process groups; and remove the slave's own cgroups."""
    from slave.isolation import IsolationError, create_isolator
    from slave.orphans import kill_orphans

    try:
        isolator, _ = create_isolator("auto", str(work_dir))
        isolator.recover()
        isolator.close()
    except (IsolationError, OSError) as exc:
        print(f"could not clean up the cgroups of {work_dir}: {exc!r}", file=sys.stderr)
    try:
        asyncio.run(kill_orphans(work_dir, grace=1.0))
    except Exception as exc:  # noqa: BLE001 - best effort in teardown
        print(f"could not kill orphaned tasks in {work_dir}: {exc!r}", file=sys.stderr)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Cluster with nothing started yet; every child it starts is ended afterwards.

    On a failing test, the children's logs show up under "Captured stdout teardown".
    """
    c = Cluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.close()
        print(c.logs())
