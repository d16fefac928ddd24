"""`cluster up`: a master and N slaves on this machine, each its own OS process.

How the children are managed:
- Each child is `python -m cli.main master|slave ...` (the same interpreter), started in
  its own session so a Ctrl-C typed in the terminal reaches only `cluster up`, which then
  stops the children in order. On Linux each child also gets PR_SET_PDEATHSIG=SIGTERM, so
  a `cluster up` that is itself SIGKILLed does not leave them running.
- The secret travels in the environment (CLUSTER_SECRET), never on a command line that
  `ps` shows; inherited CLUSTER_* / LIBPROCESS_* variables are dropped so that flags alone
  configure the children.
- Without --verbose each child's output goes to `<work-dir>/logs/<name>.log`; with it, to
  this terminal.
- Slave N works in `<work-dir>/slave-N/`; once it has registered, `<work-dir>/slaves/<slave
  id>` links there (the id is the one `cluster slaves` and `cluster task` show, read from the
  slave's own `slave.json`), so a task's sandbox is `<work-dir>/slaves/<slave id>/sandboxes/
  <task id>@<attempt>/`. The links follow re-registrations under a new id.
- Stop (SIGINT, SIGTERM, SIGHUP): SIGTERM to the slaves first (they kill their tasks and
  unregister), then to the master; whatever is still alive after its grace period gets
  SIGKILL. A second Ctrl-C skips the grace periods. A master that dies stops everything
  (exit 1); a slave that dies is reported and the rest keep running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cli.client import ClusterError, MasterClient

__all__ = ["UpConfig", "run_up"]

LINK_EVERY = 2.0  # seconds between refreshes of the slaves/<slave id> links
SLAVE_GRACE = 10.0  # slaves SIGTERM their tasks and wait kill_grace (3 s) before SIGKILL
MASTER_GRACE = 8.0
START_TIMEOUT = 20.0


@dataclass
class UpConfig:
    slaves: int
    host: str
    port: int
    work_dir: Path
    db: str | None
    cpus: float
    mem: float
    secret: str | None
    verbose: int


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path | None
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)
    reported: bool = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent(parent: int) -> Any:
    """preexec_fn: ask Linux to SIGTERM this child when `cluster up` dies."""

    def setup() -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001, S110 - not Linux: the orderly stop still works
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


class Supervisor:
    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.stop_requested = 0
        self.exit_code = 0
        self.log_dir = config.work_dir / "logs"
        self.link_warned = False

    # -- start ----------------------------------------------------------------------------

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_", "LIBPROCESS_"))}
        if self.config.secret:
            env["CLUSTER_SECRET"] = self.config.secret
        env["CLUSTER_LOG_NAME"] = name
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, child: Child) -> None:
        out: Any = None
        if child.log_path is not None:
            child.log_file = open(child.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = child.log_file
        child.proc = subprocess.Popen(
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            env=self._env(child.name),
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - no threads here
        )
        self.children.append(child)

    def _verbosity(self) -> list[str]:
        return ["-" + "v" * self.config.verbose] if self.config.verbose else []

    def start(self) -> None:
        c = self.config
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)  # and the work dir above it
        except OSError as exc:
            raise ClusterError(
                f"cannot create the work directory {c.work_dir}: {exc.strerror or exc}"
            ) from None
        _check_port_free(c.host, c.port)
        db = c.db or str(c.work_dir / "cluster.db")
        python = [sys.executable, "-m", "cli.main"]
        self._spawn(
            Child(
                "master",
                python
                + [
                    "master",
                    "--host",
                    c.host,
                    "--port",
                    str(c.port),
                    "--db",
                    db,
                    *self._verbosity(),
                ],
                self._log_path("master"),
            )
        )
        self._wait_master()
        master = f"{_client_host(c.host)}:{c.port}"
        for i in range(1, c.slaves + 1):
            name = f"slave-{i}"
            self._spawn(
                Child(
                    name,
                    python
                    + [
                        "slave",
                        "--master",
                        master,
                        "--host",
                        _client_host(c.host),
                        "--port",
                        "0",
                        "--cpus",
                        f"{c.cpus:g}",
                        "--mem",
                        f"{c.mem:g}",
                        "--work-dir",
                        str(c.work_dir / name),
                        *self._verbosity(),
                    ],
                    self._log_path(name),
                )
            )
        self._wait_slaves()
        self.link_slave_dirs()

    def _log_path(self, name: str) -> Path | None:
        return None if self.config.verbose else self.log_dir / f"{name}.log"

    def client(self) -> MasterClient:
        return MasterClient(
            f"{_client_host(self.config.host)}:{self.config.port}", self.config.secret, timeout=2.0
        )

    def _wait_master(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_children(starting=True)
            try:
                client.vars()
                return
            except ClusterError:
                pass
            if self.stop_requested:
                raise ClusterError("interrupted while the master was starting")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the master did not answer within {START_TIMEOUT:g}s; "
                    f"see {self._where_logs('master')}"
                )
            time.sleep(0.1)

    def _wait_slaves(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        active = 0
        while not self.stop_requested:
            self._check_children(starting=True)
            try:
                active = sum(s.get("state") == "active" for s in client.slaves())
            except ClusterError:
                active = 0
            if active >= self.config.slaves:
                return
            if time.monotonic() > deadline:
                print(
                    f"warning: only {active} of {self.config.slaves} slaves registered "
                    f"within {START_TIMEOUT:g}s; see {self._where_logs('slave-1')}",
                    file=sys.stderr,
                    flush=True,
                )
                return
            time.sleep(0.1)

    def _where_logs(self, name: str) -> str:
        path = self._log_path(name)
        return str(path) if path is not None else "the output above"

    # -- run ------------------------------------------------------------------------------

    def _check_children(self, starting: bool = False) -> None:
        for child in self.children:
            if child.alive() or child.reported or self.stop_requested:
                continue
            child.reported = True
            code = child.proc.returncode if child.proc else None
            reason = _last_error(child.log_path)
            detail = f": {reason}" if reason else f"; see {self._where_logs(child.name)}"
            if child.name == "master":
                raise ClusterError(f"the master exited with code {code}{detail}")
            print(
                f"warning: {child.name} exited with code {code}{detail}",
                file=sys.stderr,
                flush=True,
            )
            if starting:
                raise ClusterError(f"{child.name} exited with code {code}{detail}")

    def serve(self) -> None:
        linked = time.monotonic()
        while not self.stop_requested:
            self._check_children()
            if time.monotonic() - linked >= LINK_EVERY:
                self.link_slave_dirs()
                linked = time.monotonic()
            time.sleep(0.2)

    def link_slave_dirs(self) -> None:
        """`<work-dir>/slaves/<slave id>` -> `../slave-N` for each slave that knows its id."""
        links = self.config.work_dir / "slaves"
        wanted: dict[str, str] = {}
        for child in self.children:
            if child.name == "master":
                continue
            slave_id = _slave_id(self.config.work_dir / child.name)
            if slave_id:
                wanted[slave_id] = f"../{child.name}"
        if not wanted:
            return
        try:
            links.mkdir(exist_ok=True)
            for entry in links.iterdir():  # links of ids no longer in use by our slaves
                if entry.is_symlink() and entry.name not in wanted:
                    target = os.readlink(entry)
                    if target in wanted.values():
                        entry.unlink()
            for slave_id, target in wanted.items():
                path = links / slave_id
                if path.is_symlink() and os.readlink(path) == target:
                    continue
                if path.is_symlink():
                    path.unlink()
                path.symlink_to(target, target_is_directory=True)
        except OSError as exc:  # a read-only or odd work dir: the cluster runs on regardless
            if not self.link_warned:
                self.link_warned = True
                print(
                    f"warning: cannot link slave directories in {links}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )

    # -- stop -----------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested += 1
        if self.stop_requested == 1:
            print("\nstopping the cluster (Ctrl-C again to force)...", file=sys.stderr, flush=True)

    def stop(self) -> None:
        slaves = [c for c in self.children if c.name != "master"]
        master = [c for c in self.children if c.name == "master"]
        self._terminate(slaves, SLAVE_GRACE)
        self._terminate(master, MASTER_GRACE)
        for child in self.children:
            if child.log_file is not None:
                child.log_file.close()

    def _terminate(self, children: list[Child], grace: float) -> None:
        for child in children:
            if child.alive():
                _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            while child.alive() and time.monotonic() < deadline and self.stop_requested < 2:
                time.sleep(0.05)
            if child.alive():
                print(
                    f"warning: {child.name} did not stop within {grace:g}s; killing it",
                    file=sys.stderr,
                    flush=True,
                )
                _signal(child, signal.SIGKILL)
                assert child.proc is not None
                child.proc.wait(timeout=5)


def _signal(child: Child, sig: int) -> None:
    assert child.proc is not None
    try:
        child.proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ClusterError(
                f"cannot start the master on {host}:{port}: "
                f"{(exc.strerror or str(exc)).lower()} (is a cluster already "
                f"running? stop it, or pick another --port)"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _slave_id(work_dir: Path) -> str:
    """The id a slave recorded in its `slave.json` ('' before it has registered)."""
    import json

    try:
        value = json.loads((work_dir / "slave.json").read_text()).get("slave_id")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        return ""
    return value


def _last_error(log_path: Path | None) -> str:
    """The child's own `error: ...` line (how the CLI reports a failure), if it wrote one."""
    if log_path is None:
        return ""
    try:
        lines = log_path.read_bytes()[-8192:].decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    return ""


def banner(config: UpConfig, log_dir: Path | None) -> str:
    host = _client_host(config.host)
    url = f"http://{host}:{config.port}"
    master_opt = (
        "" if config.port == 5050 and host == "127.0.0.1" else f" --master {host}:{config.port}"
    )
    lines = [
        (
            f"cluster up: master + {config.slaves} slave{'s' if config.slaves != 1 else ''} "
            f"(work dir {config.work_dir})"
        ),
        f"  master  {url}/master/state",
        f"  vars    {url}/vars",
        f"  tasks   {url}/master/tasks",
    ]
    if log_dir is not None:
        lines.append(f"  logs    {log_dir}/")
    lines.append(f"  sandbox {config.work_dir}/slaves/<slave id>/sandboxes/<task id>@<attempt>/")
    if master_opt:
        lines.append(
            f"\nClients need the master's address: export CLUSTER_MASTER={host}:{config.port}"
        )
    lines += [
        "\nTry:",
        (
            f"  cluster submit{master_opt} --count 3 --wait "
            "'for i in $(seq 10); do echo PROGRESS $((i*10)); sleep 0.3; done'"
        ),
        f"  cluster tasks{master_opt}",
        "\nPress Ctrl-C to stop the cluster.",
    ]
    return "\n".join(lines)


def run_up(config: UpConfig) -> int:
    if config.port == 0:
        config.port = free_port(_client_host(config.host))
    config.work_dir = config.work_dir.absolute()
    sup = Supervisor(config)
    previous = {
        sig: signal.signal(sig, sup.request_stop)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        try:
            sup.start()
            if not sup.stop_requested:
                print(banner(config, None if config.verbose else sup.log_dir), flush=True)
            sup.serve()
        except BaseException:
            sup.exit_code = 1
            raise
        finally:
            sup.stop_requested = max(sup.stop_requested, 1)
            sup.stop()
            if sup.exit_code == 0:
                print("cluster stopped", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sup.exit_code
