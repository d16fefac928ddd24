"""Private ZooKeeper and PostgreSQL servers for the HA tests, started and removed by the tests.

Each server is a real one from Debian's packages (installed by scripts/ha-local.sh), run as a
child of the test process on a free 127.0.0.1 port with its data under a fresh directory
``/tmp/libproc-ha-<pid>-*``:

* ``ZooKeeperServer`` — standalone ZooKeeper, ``java`` on the package's jars
  (``/usr/share/java/zookeeper.jar``, whose manifest names its dependencies), admin server
  off, four-letter words ``ruok``/``srvr``/``mntr`` on.
* ``PostgresServer`` — ``initdb`` then ``postgres`` from the newest
  ``/usr/lib/postgresql/*/bin``, run as the unprivileged ``postgres`` user when we are root
  (PostgreSQL refuses root), listening on 127.0.0.1 only, password authentication over TCP.

Contract:
- ``start()`` returns only once the server answers (``srvr`` says standalone; a real
  ``SELECT 1`` through psycopg) and raises ``ServerError`` with the server's log tail when it
  does not within the timeout. ``stop()`` is a clean shutdown, ``kill()`` a SIGKILL of the
  server and every process it started (a crash), ``freeze()``/``thaw()`` SIGSTOP/SIGCONT
  them (a server cut off); ``start()`` again reuses the same port and data,
  so "restarted" and "lost, then back" can be tested. ``close()`` stops and deletes it all
  and is what the fixtures call, on failure too.
- Servers are started through ``setpriv --pdeathsig``: if the test process dies without
  cleaning up, the kernel stops them. So call ``start()`` from a thread that outlives the
  server (the main thread; not ``asyncio.to_thread``). Directories left by a killed run are
  removed by the next run (``sweep_stale``).
- ``missing_prerequisites()`` says, in words, what is not installed; the fixtures turn it
  into a test failure (never a skip).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cluster_harness import free_port

__all__ = [
    "PostgresServer", "ServerError", "ZooKeeperServer", "missing_prerequisites", "process_tree",
    "still_alive", "sweep_stale",
]

TMP_PREFIX = "libproc-ha-"
# As root, under /tmp itself: the postgres user must be able to reach its data directory,
# which a private $TMPDIR (mode 0700, root's) would not let it.
TMP_ROOT = Path("/tmp") if os.geteuid() == 0 and Path("/tmp").is_dir() else Path(
    tempfile.gettempdir())
ZK_JAR = Path("/usr/share/java/zookeeper.jar")
ZK_ENVIRONMENT = Path("/etc/zookeeper/conf_example/environment")  # the package's own settings
SLF4J_SIMPLE = Path("/usr/share/java/slf4j-simple.jar")  # a log binding, when present
PG_USER = "postgres"  # the system user Debian's postgresql package creates
SETUP_HINT = "install them with: sudo bash scripts/ha-local.sh (or `make ha-test`)"


class ServerError(RuntimeError):
    """A private server could not be started or stopped; the message carries its log tail."""


# -- prerequisites --------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and postgres, if any."""
    found = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            version = candidate.parent.name
            found.append((int(version) if version.isdigit() else 0, candidate))
    return max(found)[1] if found else None


def zk_classpath() -> str | None:
    """The classpath Debian's zookeeper package uses (its `environment` file), plus a log
    binding; None when the package is not installed."""
    if not ZK_JAR.exists():
        return None
    classpath = str(ZK_JAR)
    try:
        match = re.search(r'^CLASSPATH="?([^"\n]+)"?', ZK_ENVIRONMENT.read_text(), re.M)
        if match:
            classpath = match.group(1)
    except OSError:
        pass
    if SLF4J_SIMPLE.exists():
        classpath += f":{SLF4J_SIMPLE}"
    return classpath


def missing_prerequisites() -> list[str]:
    """What is missing to run both servers, each as one sentence; empty when all is there."""
    missing = []
    if shutil.which("java") is None:
        missing.append("no `java` on PATH (Debian's zookeeper package depends on one)")
    if zk_classpath() is None:
        missing.append(f"ZooKeeper is not installed ({ZK_JAR} is missing)")
    if pg_bindir() is None:
        missing.append("PostgreSQL is not installed (no initdb/postgres under "
                       "/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            missing.append(f"no `{PG_USER}` system user to run PostgreSQL as (we are root)")
    return missing


# -- shared process handling ----------------------------------------------------------------


def sweep_stale() -> None:
    """Remove directories of earlier runs whose test process is gone (a killed run)."""
    for path in TMP_ROOT.glob(TMP_PREFIX + "*"):
        match = re.match(re.escape(TMP_PREFIX) + r"(\d+)-", path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_processes() -> dict[int, int]:
    """pid -> parent pid of every process that is not a zombie, from /proc."""
    found = {}
    # Not Path.glob: it stats each match, and a process exiting meanwhile raises ESRCH there.
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path("/proc", name, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[0] != "Z":
            found[int(name)] = int(fields[1])
    return found


def process_tree(root: int) -> list[int]:
    """root and all its live descendants. (PostgreSQL's children each call setsid(), so
    its process group holds only the postmaster: signals must go to every pid.)"""
    parents = _live_processes()
    tree = [root] if root in parents else []
    for pid in tree:  # grows while iterated: breadth first
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def still_alive(pids: list[int]) -> list[int]:
    """Those of pids that are still running (not exited, not zombies)."""
    live = _live_processes()
    return [pid for pid in pids if pid in live]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _Server:
    """A server child in its own process group, its output in `log`, and its directory."""

    name = "server"

    def __init__(self, *, port: int | None = None, base: Path | None = None) -> None:
        sweep_stale()
        self.port = port or free_port()
        self.base = base or Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-",
                                                  dir=TMP_ROOT))
        self.log = self.base / f"{self.name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _spawn(self, argv: list[str], *, user: str | None = None,
               deathsig: str = "KILL") -> None:
        """Start argv in its own session, dying with us (setpriv --pdeathsig), as `user`."""
        if self.running:
            raise ServerError(f"{self.name} on port {self.port} is already running")
        wrapper: list[str] = []
        if shutil.which("setpriv"):
            wrapper = ["setpriv", "--pdeathsig", deathsig]
            if user is not None:
                wrapper += ["--reuid", user, "--regid", user, "--init-groups"]
        elif user is not None:
            raise ServerError(f"setpriv (util-linux) is needed to run {self.name} as {user}")
        log = open(self.log, "ab")  # handed to the child, closed here once it has it
        try:
            self.popen = subprocess.Popen(wrapper + argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.base,
                                          start_new_session=True)
        finally:
            log.close()
        self.starts += 1

    def _fail(self, what: str) -> ServerError:
        return ServerError(f"{self.name} on 127.0.0.1:{self.port} {what}; its log "
                           f"({self.log}) ends with:\n{_log_tail(self.log)}")

    def _wait_ready(self, probe: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running:
                code = self.popen.returncode if self.popen is not None else None
                raise self._fail(f"exited with status {code} while starting")
            try:
                if probe():  # type: ignore[operator]
                    return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
            time.sleep(0.1)
        self.kill()
        raise self._fail(f"did not answer within {timeout:g} s (last: {last!r})")

    def _signal_tree(self, sig: int) -> list[int]:
        """Send sig to the server and every process it started; returns their pids."""
        pids = process_tree(self.popen.pid) if self.popen is not None else []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def _wait_gone(self, pids: list[int], timeout: float = 15.0) -> None:
        """Wait (bounded) until none of pids runs; SIGKILL the stragglers after that."""
        deadline = time.monotonic() + timeout
        while left := still_alive(pids):
            if time.monotonic() > deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server and every process it started, at once: a crash."""
        if self.popen is not None:
            pids = self._signal_tree(signal.SIGKILL)
            self.popen.wait(30)
            self._wait_gone(pids)
            self.popen = None

    def freeze(self) -> None:
        """SIGSTOP the server and its children: sockets stay open, nothing answers."""
        self._signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_tree(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server (SIGKILL if a clean stop fails) and delete its directory."""
        try:
            if self.popen is not None:
                self.thaw()
                self.stop()
        except ServerError:
            self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    stop_signal = signal.SIGTERM

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown with the server's `stop_signal`; the data stays. If it does not
        stop within `timeout`, it is killed and ServerError raised."""
        if self.popen is None:
            return
        pids = process_tree(self.popen.pid)
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._fail(f"did not stop within {timeout:g} s of signal "
                             f"{self.stop_signal} (killed)") from None
        self._wait_gone(pids)
        self.popen = None


# -- ZooKeeper ------------------------------------------------------------------------------

_ZOO_CFG = """\
tickTime={tick_ms}
dataDir={data}
clientPort={port}
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
minSessionTimeout={min_session_ms}
maxSessionTimeout={max_session_ms}
maxClientCnxns=0
"""


class ZooKeeperServer(_Server):
    """A standalone ZooKeeper on 127.0.0.1:port, data under `base/zookeeper`.

    `tick` (seconds) sets ZooKeeper's tickTime: sessions are checked for expiry once a tick,
    and clients may ask for session timeouts from 2 ticks up to `max_session_timeout`.
    """

    name = "zookeeper"
    stop_signal = signal.SIGTERM  # runs ZooKeeper's shutdown hook

    def __init__(self, *, port: int | None = None, tick: float = 0.2,
                 max_session_timeout: float = 60.0) -> None:
        super().__init__(port=port)
        self.data = self.base / "zookeeper"
        self.data.mkdir(exist_ok=True)
        self.config = self.base / "zoo.cfg"
        self.config.write_text(_ZOO_CFG.format(
            tick_ms=int(tick * 1000), data=self.data, port=self.port,
            min_session_ms=int(2 * tick * 1000), max_session_ms=int(max_session_timeout * 1000)))

    @property
    def hosts(self) -> str:
        """`127.0.0.1:PORT`, as a ZooKeeper client's connect string takes it."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/cluster") -> str:
        """A `zk://127.0.0.1:PORT/PATH` URL for this server."""
        return f"zk://{self.hosts}{path}"

    def start(self, timeout: float = 60.0) -> ZooKeeperServer:
        classpath = zk_classpath()
        java = shutil.which("java")
        if classpath is None or java is None:
            raise ServerError(f"ZooKeeper cannot start: {'; '.join(missing_prerequisites())}; "
                              f"{SETUP_HINT}")
        self._spawn([java, "-Xmx192m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-Dorg.slf4j.simpleLogger.showDateTime=true",
                     "-Dzookeeper.admin.enableServer=false",
                     "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain",
                     str(self.config)])
        self._wait_ready(lambda: "Mode: standalone" in self.four_letter("srvr"), timeout)
        return self

    def four_letter(self, word: str, timeout: float = 2.0) -> str:
        """Send a four-letter command (`ruok`, `srvr`, `mntr`) and return the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")



# -- PostgreSQL -----------------------------------------------------------------------------


class PostgresServer(_Server):
    """A private PostgreSQL cluster on 127.0.0.1:port, data under `base/pgdata`.

    The superuser is `postgres` with a random password; `url(db)` is an SQLAlchemy URL for
    psycopg 3. `settings` become `-c name=value` options of the server.
    """

    name = "postgresql"
    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown: clients cut, data consistent

    def __init__(self, *, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        super().__init__(port=port)
        self.user = PG_USER
        self.password = os.urandom(12).hex()
        self.data = self.base / "pgdata"
        self.sockets = self.base / "sockets"
        self.settings = {"fsync": "off", "max_connections": "100",
                         "shared_buffers": "32MB", **(settings or {})}
        self._run_as = PG_USER if os.geteuid() == 0 else None
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        """`postgresql+psycopg://postgres:PASSWORD@127.0.0.1:PORT/DATABASE`."""
        return (f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def conninfo(self, database: str = "postgres") -> str:
        """The same server as a libpq connection string (for psycopg directly)."""
        return (f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} "
                f"dbname={database} connect_timeout=5")

    def _initdb(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise ServerError(f"PostgreSQL cannot start: {'; '.join(missing_prerequisites())}; "
                              f"{SETUP_HINT}")
        self.sockets.mkdir(exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            # PostgreSQL will not run as root: the directory becomes the postgres user's.
            entry = pwd.getpwnam(self._run_as)
            for path in (self.base, self.sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.base.chmod(0o700)
        argv = [str(bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        wrapper = ([] if self._run_as is None
                   else ["setpriv", "--reuid", self._run_as, "--regid", self._run_as,
                         "--init-groups"])
        done = subprocess.run(wrapper + argv, capture_output=True, text=True, cwd=self.base,
                              timeout=120, check=False)
        pwfile.unlink()
        if done.returncode != 0:
            raise ServerError(f"initdb failed (exit {done.returncode}):\n"
                              f"{(done.stdout + done.stderr)[-3000:]}")
        self._initialised = True

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb on first start, then postgres on the same data directory and port."""
        if not self._initialised:
            self._initdb()
        bindir = pg_bindir()
        assert bindir is not None
        argv = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockets}"]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        # SIGQUIT is PostgreSQL's immediate shutdown: what the kernel sends if we die.
        self._spawn(argv, user=self._run_as, deathsig="QUIT")
        self._wait_ready(self._answers, timeout)
        return self

    def _answers(self) -> bool:
        import psycopg

        with psycopg.connect(self.conninfo(), connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)


    def create_database(self, name: str) -> str:
        """CREATE DATABASE name (a plain identifier); returns its SQLAlchemy URL."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r} is not a lower-case identifier")
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
