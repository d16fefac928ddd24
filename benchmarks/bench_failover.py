"""Benchmark: kill -9 of the leading master -> the first task the new leader accepts.

    python -m benchmarks.bench_failover [--rounds 5] [--masters 3] [--session-timeout 5]
                                        [--tick 0.2]

Needs Debian's zookeeper and postgresql (scripts/ha-local.sh). Starts a private ZooKeeper
and a private PostgreSQL (tests/ha_servers.py), `--masters` real `cluster master --zk …
--db postgresql+psycopg://…` processes and one `cluster slave --master zk://…`. A
`sleep` task keeps running on the slave through every round. Each round, with the
cluster serving (a task just submitted through the CLI's client and FINISHED):

* kill -9 of the leader; then, through the CLI's own client (cli/client.py, following
  `zk://` as `cluster submit --master zk://…` does, still holding the dead leader's address
  as a long-lived client would), one task is submitted: the time from the kill until the
  new leader accepts it (`201`), and, measured alongside, until a standby's own
  `/master/state` first says it leads (polled every 20 ms);
* both beside the ZooKeeper session timeout the masters were started with and report in
  their /master/state, as a ratio. It is the floor, give or take: ZooKeeper keeps a silent
  session that long counted from the last packet it heard (a ping up to a third of it
  before the kill), so a round may come in a little under it;
* the killed master is started again (it joins as a standby) before the next round.

Every figure is the median of the rounds. Every server and process is stopped and removed
at the end, on failure and Ctrl-C (or SIGTERM) too; they also die with this process.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# tests/ha first: ha_cluster's `conftest` is tests/ha/conftest.py.
sys.path[:0] = [str(ROOT / "tests" / "ha"), str(ROOT / "tests")]

from ha_cluster import own_state  # noqa: E402

from cli.client import ClusterError, MasterClient  # noqa: E402
from cluster_harness import wait_for  # noqa: E402
from ha_servers import (  # noqa: E402
    PostgresServer,
    ZooKeeperServer,
    _Server,
    missing_prerequisites,
)

READY = 60.0  # bound on every wait for a process or the cluster (a loaded machine)


def _cluster_command() -> list[str]:
    """The installed `cluster` command beside this interpreter, else the same via -c."""
    script = Path(sys.executable).with_name("cluster")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import main; main()"]


class ClusterProcess(_Server):
    """One `cluster master|slave …` OS process on its own free port: in its own session,
    dying with us, its output in `log` (ha_servers' process handling). `kill()` is kill -9
    of it and its children; `start()` again runs it anew on the same port."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name  # before _Server.__init__, which names the log after it
        super().__init__()
        self.args = args

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = READY) -> ClusterProcess:
        self._spawn([*_cluster_command(), *self.args, "--host", "127.0.0.1",
                     "--port", str(self.port)])
        self._wait_ready(self.ready, timeout)
        return self

    def ready(self) -> bool:
        """A master answers its own /master/state; a slave is ready once it runs (the
        leader lists it soon after: `HaRun.add_slave` waits for that)."""
        return self.args[0] != "master" or self.state() is not None

    def state(self) -> dict[str, Any] | None:
        """A master's own /master/state (redirects not followed), None if it does not answer."""
        return own_state(self.port) if self.running else None


@dataclass
class HaRun:
    """The servers and cluster processes of one run; `close()` ends them all."""

    zk: ZooKeeperServer
    pg: PostgresServer
    session_timeout: float
    masters: list[ClusterProcess] = field(default_factory=list)
    slaves: list[ClusterProcess] = field(default_factory=list)

    @property
    def zk_url(self) -> str:
        return self.zk.url("/bench-failover")

    def add_master(self, db: str) -> ClusterProcess:
        master = ClusterProcess(f"master{len(self.masters) + 1}", [
            "master", "--zk", self.zk_url, "--db", db,
            "--zk-session-timeout", f"{self.session_timeout:g}"])
        self.masters.append(master)
        return master.start()

    def add_slave(self) -> ClusterProcess:
        slave = ClusterProcess(f"slave{len(self.slaves) + 1}", [
            "slave", "--master", self.zk_url, "--cpus", "4", "--mem", "4096",
            "--isolation", "none"])
        slave.args += ["--work-dir", str(slave.base / "work")]
        self.slaves.append(slave)
        slave.start()
        leader = MasterClient(self.leader().url)
        wait_for(lambda: any(s.get("state") == "active" and s.get("pid", "").endswith(
            f":{slave.port}") for s in leader.slaves()), READY, interval=0.05,
            what=f"{slave.name} active on the leader", show=leader.slaves)
        return slave

    def leader(self, timeout: float = READY) -> ClusterProcess:
        """The one live master that leads, once every other live one names it."""
        def check() -> ClusterProcess | None:
            states = {m: m.state() for m in self.masters if m.running}
            leading = [m for m, s in states.items() if s and s.get("leading")]
            if len(leading) != 1:
                return None
            pid = states[leading[0]]["pid"]  # type: ignore[index]
            if all(s and (s.get("leader") or {}).get("pid") == pid
                   for m, s in states.items() if m is not leading[0]):
                return leading[0]
            return None

        found = wait_for(check, timeout, interval=0.05, what="exactly one leading master",
                         show=lambda: {m.name: (m.state() or {}).get("role")
                                       for m in self.masters})
        assert found is not None  # wait_for returns only a truthy value
        return found

    def close(self) -> None:
        """Slaves first (their tasks with them), then masters, then the servers; each is
        ended even when an earlier one fails to."""
        with contextlib.ExitStack() as stack:
            for proc in [self.zk, self.pg, *self.masters, *self.slaves]:
                stack.callback(proc.close)  # run last-in first-out: slaves first


def _wait_task(client: MasterClient, task_id: str, state: str) -> None:
    wait_for(lambda: client.task(task_id)["state"] == state, READY, interval=0.05,
             what=f"task {task_id} {state}", show=lambda: client.task(task_id))


class LeadWatch(threading.Thread):
    """Polls the standbys' own /master/state every 20 ms; `at`: when one first led."""

    def __init__(self, standbys: list[ClusterProcess]) -> None:
        super().__init__(daemon=True)
        self.standbys = standbys
        self.at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.at is None:
            for m in self.standbys:
                if (m.state() or {}).get("leading"):
                    self.at = time.monotonic()
                    return
            self.done.wait(0.02)


@dataclass
class Round:
    leads: float  # kill -9 -> a standby's /master/state says it leads
    accepted: float  # kill -9 -> the submit accepted (201) by the new leader
    finished: float  # kill -9 -> that task FINISHED (the slave re-registered)
    kept_running: bool  # the long task still RUNNING under the new leader
    retried: int  # submits that failed (ClusterError) and were made again


def failover_round(ha: HaRun, client: MasterClient, i: int, long_task: str) -> Round:
    old = ha.leader()
    wait_for(lambda: any(s.get("state") == "active" for s in client.slaves()), READY,
             interval=0.05, what="the slave active on the leader", show=client.slaves)
    (before,) = client.submit([{"command": "true", "name": f"before-{i}"}])
    _wait_task(client, before, "FINISHED")
    assert client.base == old.url, (client.base, old.url)  # the client holds the leader
    standbys = [m for m in ha.masters if m is not old and m.running]
    watch = LeadWatch(standbys)
    watch.start()
    killed = time.monotonic()
    old.kill()  # SIGKILL of it (and any child), waits until it is gone: ms
    retried = 0
    while True:
        try:
            ids = client.submit([{"command": "true", "name": f"after-{i}"}])
            break
        except ClusterError as exc:  # e.g. no leader within follow_wait: say so, try again
            retried += 1
            print(f"  round {i + 1}: submit failed ({exc}); again", flush=True)
            if time.monotonic() - killed > 3 * READY:
                raise
    accepted = time.monotonic() - killed
    new = ha.leader()
    # The 201 came from the new leader: the client ended up at its address.
    assert new is not old and client.base == new.url, (client.base, new.url)
    (after,) = ids
    _wait_task(client, after, "FINISHED")
    finished = time.monotonic() - killed
    watch.done.set()
    watch.join(5.0)
    leads = (watch.at - killed) if watch.at is not None else accepted
    kept = client.task(long_task)["state"] == "RUNNING"
    old.start()  # back as a standby, at the back of the line
    ha.leader()
    return Round(leads, accepted, finished, kept, retried)


def run(rounds: int, masters: int, session_timeout: float, tick: float) -> list[Round]:
    zk = ZooKeeperServer(tick=tick)
    pg = PostgresServer()
    ha = HaRun(zk, pg, session_timeout)
    try:
        zk.start()
        pg.start()
        db = pg.create_database("bench_failover")
        for _ in range(masters):
            ha.add_master(db)
        # The baseline, as the masters themselves report it (their /master/state).
        reported = {(m.state() or {}).get("zookeeper", {}).get("session_timeout")
                    for m in ha.masters}
        if reported != {session_timeout}:
            raise RuntimeError(f"the masters report session timeouts {reported}, "
                               f"not the {session_timeout:g} s they were started with")
        ha.leader()
        ha.add_slave()
        client = MasterClient(ha.zk_url, timeout=10.0, follow_wait=READY)
        (long_task,) = client.submit([{"command": "sleep 3600", "name": "kept"}])
        _wait_task(client, long_task, "RUNNING")
        results = []
        for i in range(rounds):
            r = failover_round(ha, client, i, long_task)
            print(f"  round {i + 1}: leads {r.leads:.2f} s, submit accepted {r.accepted:.2f} s,"
                  f" that task FINISHED {r.finished:.2f} s after the kill; long task "
                  + ("still RUNNING" if r.kept_running else "NOT RUNNING"), flush=True)
            results.append(r)
        client.kill(long_task)
        return results
    except Exception:  # not on Ctrl-C: what went wrong, from the processes' own logs
        for proc in [*ha.masters, *ha.slaves]:
            print(f"--- {proc.name} log tail:\n{_tail(proc.log)}", file=sys.stderr)
        raise
    finally:
        ha.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def report(results: list[Round], masters: int, session_timeout: float, tick: float) -> None:
    leads, accepted, finished = (statistics.median(getattr(r, k) for r in results)
                                 for k in ("leads", "accepted", "finished"))
    print(f"master failover, median of {len(results)} ({masters} `cluster master --zk` on "
          f"PostgreSQL, 1 slave; ZooKeeper tick {tick:g} s, session timeout "
          f"{session_timeout:g} s)")
    print(f"  kill -9 of the leader -> first submit accepted (201): {accepted:6.2f} s   "
          f"session timeout {session_timeout:6.2f} s   ratio {accepted / session_timeout:5.2f}x")
    print(f"  kill -9 of the leader -> a standby says it leads:     {leads:6.2f} s   "
          f"session timeout {session_timeout:6.2f} s   ratio {leads / session_timeout:5.2f}x")
    print(f"  kill -9 of the leader -> that task FINISHED:          {finished:6.2f} s   "
          "(the slave re-registered with the new leader)")
    print(f"  every round, accepted: {', '.join(f'{r.accepted:.2f}' for r in results)} s")
    kept = sum(r.kept_running for r in results)
    retried = sum(r.retried for r in results)
    print(f"  the long task was RUNNING after {kept} of {len(results)} failovers; "
          f"{retried} submit(s) had to be made again")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--masters", type=int, default=3, choices=range(2, 6))
    parser.add_argument("--session-timeout", type=float, default=5.0,
                        help="the masters' --zk-session-timeout, s")
    parser.add_argument("--tick", type=float, default=0.2, help="ZooKeeper's tickTime, s")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    missing = missing_prerequisites()
    if missing:
        print("bench_failover NOT RUN: " + "; ".join(missing)
              + " (run scripts/ha-local.sh as root)", file=sys.stderr)
        return 1
    # SIGTERM (e.g. from `timeout`) must still run the finally that ends every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"bench_failover: {args.rounds} rounds, {args.masters} masters", flush=True)
    try:
        results = run(args.rounds, args.masters, args.session_timeout, args.tick)
    except KeyboardInterrupt:
        print("interrupted; every server and process was stopped", file=sys.stderr)
        return 130
    report(results, args.masters, args.session_timeout, args.tick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
