"""Fault soak: 500 tasks across 3 slaves while a slave and the master are killed (-9) and
restarted at random intervals for 60 s; then every task must be terminal, exactly once.

    python -m benchmarks.bench_fault_soak [--tasks 500] [--seconds 60] [--seed 1]

"Exactly once" is checked three ways: the database holds each submitted id once and in a
terminal state; the master's final answer agrees with the database; and every task that the
master says FINISHED left a completion mark for the attempt the master recorded. Prints the
final state counts, how many tasks ran more than once (LOST and re-queued), and the faults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"FINISHED", "FAILED", "KILLED", "LOST"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: object | None = None, timeout: float = 5.0) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Cluster:
    def __init__(self, base: Path, port: int) -> None:
        self.base, self.port = base, port
        self.db = base / "master.db"
        self.url = f"http://127.0.0.1:{port}"
        self.master: subprocess.Popen[bytes] | None = None
        self.slaves: dict[int, subprocess.Popen[bytes]] = {}
        self.slave_ports = {i: free_port() for i in range(3)}

    def _spawn(self, code: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.base / log, "ab")
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)

    def start_master(self) -> None:
        self.master = self._spawn(
            "import asyncio\nfrom master.main import run_master\n"
            "from master.process import MasterConfig\n"
            f"asyncio.run(run_master(host='127.0.0.1', port={self.port}, db={str(self.db)!r},"
            " config=MasterConfig(heartbeat_interval=0.5, slave_timeout=3.0,"
            " staging_timeout=10.0)))", "master.log")

    def start_slave(self, i: int) -> None:
        self.slaves[i] = self._spawn(
            "import asyncio\nfrom slave.main import run_slave\n"
            f"asyncio.run(run_slave(master='127.0.0.1:{self.port}', host='127.0.0.1',"
            f" port={self.slave_ports[i]}, cpus=8, mem=8192,"
            f" work_dir={str(self.base / f'slave{i}')!r}, progress_interval=0.5))",
            f"slave{i}.log")

    def kill(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop_all(self) -> None:
        for proc in [*self.slaves.values(), self.master]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.slaves.values(), self.master]:
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def wait_up(self, slaves: int, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                got = http("GET", self.url + "/master/slaves")
                if sum(s["state"] == "active" for s in got["slaves"]) >= slaves:  # type: ignore[index]
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"cluster not up with {slaves} slaves in {timeout}s; see {self.base}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    marks = base / "marks"
    marks.mkdir()
    cluster = Cluster(base, free_port())
    cluster.start_master()
    for i in range(3):
        cluster.start_slave(i)
    cluster.wait_up(3)
    # Tasks of 0.5-3 s that print progress and leave a mark per finished attempt.
    specs = [{"command": (f"sleep {rng.uniform(0.2, 1.5):.2f}; echo PROGRESS 50; "
                          f"sleep {rng.uniform(0.2, 1.5):.2f}; "
                          f"echo $TASK_ATTEMPT >> {marks}/$TASK_ID"),
              "name": f"soak-{n}", "cpus": 0.5, "mem": 64, "retries": 5}
             for n in range(args.tasks)]
    ids: list[str] = []
    for start in range(0, len(specs), 100):
        ids += http("POST", cluster.url + "/master/tasks", specs[start:start + 100])["ids"]  # type: ignore[index]
    faults: list[str] = []
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        time.sleep(rng.uniform(3.0, 8.0))
        victim = rng.choice(["slave", "slave", "master"])
        if victim == "master":
            cluster.kill(cluster.master)
            time.sleep(rng.uniform(0.5, 2.0))
            cluster.start_master()
            faults.append(f"{time.time() - t0:5.1f}s kill -9 master, restarted")
        else:
            i = rng.randrange(3)
            cluster.kill(cluster.slaves[i])
            time.sleep(rng.uniform(0.5, 4.0))
            cluster.start_slave(i)
            faults.append(f"{time.time() - t0:5.1f}s kill -9 slave{i}, restarted")
    # Let everything settle, then check.
    deadline = time.time() + 120
    tasks: list[dict[str, object]] = []
    while time.time() < deadline:
        try:
            tasks = http("GET", cluster.url + "/master/tasks?limit=10000")["tasks"]  # type: ignore[index]
            if len(tasks) >= len(ids) and all(t["state"] in TERMINAL for t in tasks):
                break
        except OSError:
            pass
        time.sleep(1.0)
    elapsed = time.time() - t0
    cluster.stop_all()
    with sqlite3.connect(cluster.db) as conn:
        rows = dict(conn.execute("SELECT id, state FROM tasks").fetchall())
    problems = []
    counts: dict[str, int] = {}
    by_id = {str(t["id"]): t for t in tasks}
    for tid in ids:
        state = rows.get(tid)
        counts[str(state)] = counts.get(str(state), 0) + 1
        if state not in TERMINAL:
            problems.append(f"task {tid} ended {state} in the database")
        elif by_id.get(tid, {}).get("state") != state:
            problems.append(f"task {tid}: master said {by_id.get(tid, {}).get('state')}, "
                            f"database {state}")
        elif state == "FINISHED":
            attempt = str(by_id[tid]["attempts"])
            mark = marks / tid
            done = mark.read_text().split() if mark.exists() else []
            if attempt not in done:
                problems.append(f"task {tid} FINISHED on attempt {attempt} but left no mark")
    if len(rows) != len(ids):
        problems.append(f"database holds {len(rows)} tasks, {len(ids)} were submitted")
    reran = sum(1 for t in tasks if int(t["attempts"]) > 1)  # type: ignore[call-overload]
    print(f"fault soak: {len(ids)} tasks, 3 slaves, {len(faults)} faults in "
          f"{args.seconds:.0f}s, all settled after {elapsed:.1f}s")
    for f in faults:
        print("   ", f)
    print("final states:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"tasks that ran more than once (LOST, re-queued): {reran}")
    if problems:
        print(f"FAIL: {len(problems)} problem(s)")
        for p in problems[:20]:
            print("   ", p)
    else:
        print("OK: every task reached exactly one terminal state; database and master agree")
    if args.keep or problems:
        print(f"work directory kept: {base}")
    else:
        import shutil
        shutil.rmtree(base, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
