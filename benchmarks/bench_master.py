"""The master alone: how many tasks per second it can drive, with slaves that cost nothing.

    python -m benchmarks.bench_master [--tasks 2000]

The slaves here are libproc processes in this benchmark's own OS process that answer every
launch at once with RUNNING and FINISHED status updates, so what is measured is the master's
own cost per task: the submit, scheduling, the state machine, four SQLite writes, and the
messages (a launch, two updates, two acknowledgements).

The baseline, measured in the same run, is the same message choreography against an "echo
master": a bare libproc process in its own OS process that launches tasks on the same fake
slaves, with the same capacity bound, and acknowledges every update at once, with no
state machine, no database and no HTTP. The ratio is the master's tasks/s over the echo
master's: the share of the transport's speed that the master keeps.

Two shapes: every task fits at once (the master's work is all launching and updates), and
capacity for only 64 at a time (the other tasks wait PENDING, so every ending task makes
the master schedule again: the case that used to cost a scan of every task).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import libproc
from libproc import UPID, ProtobufProcess
from protos import auth
from protos import cluster_pb2 as pb
from tests.cluster_harness import REPO, Cluster, free_port
from tests.signed_peers import SignedSlave

SLAVES = 4
NARROW_CPUS = 16.0  # per slave, tasks of 1 cpu: 64 at a time over 4 slaves


class FastSlave(SignedSlave):
    """Registers, then finishes every launched task at once; counts acknowledged FINISHEDs.

    It signs and checks messages as a real slave does (protos/auth.py)."""

    def __init__(self, master: UPID, cpus: float) -> None:
        super().__init__(prefix="slave")
        self.master = master
        self.cpus = cpus
        self.finished_uuids: set[bytes] = set()
        self.acked = 0
        self.all_acked: asyncio.Future[None] | None = None
        self.expect = 0

    def initialize(self) -> None:
        super().initialize()
        self.register(self.master, cpus=self.cpus, mem=1e9, hostname="bench")

    def on_command(self, sender: UPID, msg: Any) -> None:
        if isinstance(msg, pb.LaunchTasksMessage):
            self._launch(sender, msg)
        elif isinstance(msg, pb.StatusUpdateAcknowledgementMessage):
            self._ack(sender, msg)
        else:
            super().on_command(sender, msg)

    def _launch(self, sender: UPID, msg: pb.LaunchTasksMessage) -> None:
        slave_id = pb.SlaveID(value=self.slave_id)
        for task in msg.tasks:
            running = pb.StatusUpdate(task_id=task.task_id, state=pb.RUNNING,
                                      uuid=uuid.uuid4().bytes, attempt=task.attempt,
                                      slave_id=slave_id)
            finished = pb.StatusUpdate(task_id=task.task_id, state=pb.FINISHED,
                                       uuid=uuid.uuid4().bytes, attempt=task.attempt,
                                       slave_id=slave_id, exit_code=0)
            self.finished_uuids.add(finished.uuid)
            self.signed(sender, pb.StatusUpdateMessage(update=running))
            self.signed(sender, pb.StatusUpdateMessage(update=finished))

    def _ack(self, _sender: UPID, msg: pb.StatusUpdateAcknowledgementMessage) -> None:
        if msg.uuid in self.finished_uuids:
            self.finished_uuids.discard(msg.uuid)
            self.acked += 1
        self.got.clear()  # a long run must not keep every message


class EchoMaster(ProtobufProcess):
    """The baseline: the master's messages with nothing behind them (signed and checked as
    the master does, so the ratio leaves authentication's cost out of the master's share)."""

    def __init__(self) -> None:
        super().__init__("master")
        self.slaves: list[tuple[UPID, float]] = []
        self.free: dict[UPID, float] = {}
        self.sessions: dict[UPID, auth.Session] = {}
        self.queue: list[int] = []
        self.seq = 0

    def initialize(self) -> None:
        self.install(pb.RegisterSlaveMessage, self._register)
        self.install(pb.StatusUpdateMessage, self._update)
        self.install(pb.PongSlaveMessage, lambda _s, _m: None)
        self.install("bench.go", self._go)

    def _signed(self, to: UPID, msg: Any) -> None:
        self.sessions[to].seal(msg)
        self.send(to, msg)

    def _register(self, sender: UPID, msg: pb.RegisterSlaveMessage) -> None:
        self.slaves.append((sender, msg.resources.cpus))
        self.free[sender] = msg.resources.cpus
        answer = pb.SlaveRegisteredMessage(
            slave_id=pb.SlaveID(value=f"S{len(self.slaves)}"), heartbeat_interval=1.0,
            nonce=msg.nonce, master_nonce=auth.new_nonce(), key=auth.new_key())
        self.sessions[sender] = auth.Session(
            auth.session_key(answer.key, msg.nonce, answer.master_nonce), auth.MASTER_TO_SLAVE)
        self._signed(sender, answer)

    def _go(self, _sender: UPID, body: bytes) -> None:
        self.queue = list(range(int(body), 0, -1))
        for slave, _cpus in self.slaves:
            self._fill(slave)

    def _fill(self, slave: UPID) -> None:
        infos = []
        while self.queue and self.free[slave] >= 1.0:
            tid = self.queue.pop()
            self.free[slave] -= 1.0
            infos.append(pb.TaskInfo(name=str(tid), task_id=pb.TaskID(value=str(tid)),
                                     command="true", resources=pb.Resources(cpus=1, mem=1),
                                     attempt=1))
        if infos:
            self.seq += 1
            self._signed(slave, pb.LaunchTasksMessage(id=self.seq, tasks=infos,
                                                      slave_id=pb.SlaveID(value="x")))

    def _update(self, sender: UPID, msg: pb.StatusUpdateMessage) -> None:
        session = self.sessions.get(sender)
        if session is None or not session.open(msg):
            return
        update = msg.update
        self._signed(sender, pb.StatusUpdateAcknowledgementMessage(
            slave_id=update.slave_id, task_id=update.task_id, uuid=update.uuid))
        if update.state == pb.FINISHED:
            self.free[sender] += 1.0
            self._fill(sender)


def _cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(master: UPID, cpus: float, n: int, start: Any, pid: int) -> tuple[float, float]:
    """Register fake slaves with `master`, call `start()`, wait for n FINISHED acks."""
    slaves = [FastSlave(master, cpus) for _ in range(SLAVES)]
    for s in slaves:
        libproc.spawn(s)
    deadline = time.monotonic() + 20
    while not all(s.slave_id for s in slaves):
        if time.monotonic() > deadline:
            raise SystemExit("fake slaves did not register within 20 s")
        await asyncio.sleep(0.02)
    cpu0, t0 = _cpu_secs(pid), time.perf_counter()
    await start()
    deadline = time.monotonic() + 300
    while sum(s.acked for s in slaves) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sum(s.acked for s in slaves)} of {n} tasks finished")
        await asyncio.sleep(0.005)
    elapsed, cpu = time.perf_counter() - t0, _cpu_secs(pid) - cpu0
    for s in slaves:
        libproc.terminate(s.pid)
    return n / elapsed, cpu / n


async def _run_master(n: int, cpus: float, cpus_per_task: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-master-") as tmp:
        cluster = Cluster(Path(tmp), log_level="WARNING", slave_timeout=30.0)
        try:
            child = cluster.start_master()
            port = cluster.master_port
            body = json.dumps([{"command": "true", "cpus": cpus_per_task, "mem": 1}
                               for _ in range(n)]).encode()

            def post() -> None:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/master/tasks",
                                             data=body, method="POST")
                urllib.request.urlopen(req, timeout=60).read()

            async def start() -> None:
                await asyncio.to_thread(post)

            return await _drive(UPID("master", "127.0.0.1", port), cpus, n, start, child.pid)
        finally:
            cluster.close()


async def _run_echo(n: int, cpus: float) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_master",
                              "--echo-master", str(port)], cwd=str(REPO), env=env)
    try:
        target = UPID("master", "127.0.0.1", port)
        deadline = time.monotonic() + 20
        while True:  # wait for it to listen
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("echo master did not start") from None
                await asyncio.sleep(0.05)
        sender = ProtobufProcess(prefix="bench")
        libproc.spawn(sender)

        async def start() -> None:
            sender.send(target, "bench.go", str(n).encode())

        return await _drive(target, cpus, n, start, child.pid)
    finally:
        child.terminate()
        child.wait(10)


def _echo_master(port: int) -> None:
    async def serve() -> None:
        await libproc.start(host="127.0.0.1", port=port)
        libproc.spawn(EchoMaster())
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())


async def _bench(n: int) -> None:
    await libproc.start(host="127.0.0.1", port=0)
    rows = []
    try:
        for label, cpus in ((f"all {n} fit at once", float(n)),
                            (f"{int(NARROW_CPUS) * SLAVES} at a time, the rest PENDING",
                             NARROW_CPUS)):
            echo_rate, echo_cpu = await _run_echo(n, cpus)
            rate, cpu = await _run_master(n, cpus, 1.0)
            rows.append((label, rate, cpu, echo_rate, echo_cpu))
    finally:
        await libproc.stop()
    print(f"\nbench_master: {n} tasks, {SLAVES} fake slaves, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'shape':<34} {'master':>22} {'echo master (baseline)':>26} {'ratio':>7}")
    for label, rate, cpu, echo_rate, echo_cpu in rows:
        print(f"{label:<34} {rate:>8,.0f} tasks/s {cpu * 1000:5.2f} ms "
              f"{echo_rate:>10,.0f} tasks/s {echo_cpu * 1000:5.2f} ms {rate / echo_rate:>6.2f}x")
    print("(ms = the master's own CPU per task, from /proc/<pid>/stat)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--echo-master", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_master:
        _echo_master(args.echo_master)
        return
    asyncio.run(_bench(args.tasks))


if __name__ == "__main__":
    main()
