"""The seed's Master and Slave, as two OS processes exchanging protobuf messages.

    python -m examples.master_slave                         # the master; starts one slave
    python -m examples.master_slave slave --master UPID     # a slave on its own

Both are ProtobufProcesses using `install` with field unpacking, as in the seed:

    Master: install(ReportProgressMessage, report_progress, "tasks")   -> (sender, [Task])
    Slave:  install(LaunchTasksMessage, launch_tasks, "id", "tasks")   -> (sender, id, [TaskInfo])

The slave says hello with an empty ReportProgressMessage; the master links to it and answers
with a LaunchTasksMessage of three tasks; the slave "runs" them (progress grows on a timer,
`delay`) and reports the progress of all of them in one ReportProgressMessage per interval.
When every task is at 100% the master sends `shutdown`; the slave terminates, its OS process
exits, its socket closes, and the master's link delivers `exited` (how libprocess notices).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

import libproc
from libproc import UPID, Promise, ProtobufProcess
from protos import cluster_pb2 as pb

REPORT_INTERVAL = 0.1  # seconds between the slave's progress reports


class Master(ProtobufProcess):
    def __init__(self) -> None:
        super().__init__("master")
        self.progress: dict[str, float] = {}
        self.launched = 0
        self.done: Promise[None] = Promise()

    def initialize(self) -> None:
        self.install(pb.ReportProgressMessage, self.report_progress, "tasks")

    def report_progress(self, sender: UPID, tasks: list[pb.Task]) -> None:
        if not tasks and self.launched == 0:
            self.launch(sender)
            return
        for task in tasks:
            self.progress[task.task_id.value] = task.progress
        shown = ", ".join(f"{t.name} {t.progress:.0%}" for t in tasks)
        print(f"master: progress from {sender.id}: {shown}", flush=True)
        if self.progress and all(p >= 1.0 for p in self.progress.values()):
            print(
                f"master: all {len(self.progress)} tasks finished on {sender.id}; sending shutdown",
                flush=True,
            )
            self.send(sender, "shutdown")

    def launch(self, slave: UPID) -> None:
        self.link(slave)
        self.launched += 1
        tasks = [
            pb.TaskInfo(name=f"task-{i}", task_id=pb.TaskID(value=f"t{i}"), command=f"step {i}")
            for i in (1, 2, 3)
        ]
        print(
            f"master: {slave} said hello; LaunchTasksMessage id={self.launched} with "
            f"{len(tasks)} tasks",
            flush=True,
        )
        self.send(slave, pb.LaunchTasksMessage(id=self.launched, tasks=tasks))

    def exited(self, pid: UPID) -> None:
        print(f"master: slave {pid.id} exited", flush=True)
        self.done.set(None)


class Slave(ProtobufProcess):
    def __init__(self, master: UPID) -> None:
        super().__init__(prefix="slave")
        self.master = master
        self.tasks: dict[str, pb.Task] = {}
        self.speed: dict[str, float] = {}

    def initialize(self) -> None:
        self.install(pb.LaunchTasksMessage, self.launch_tasks, "id", "tasks")
        self.install("shutdown", self.shutdown)
        self.link(self.master)
        self.send(self.master, pb.ReportProgressMessage())  # hello

    def launch_tasks(self, sender: UPID, launch_id: int, tasks: list[pb.TaskInfo]) -> None:
        print(
            f"slave: launch {launch_id} from {sender.id}: {', '.join(t.name for t in tasks)}",
            flush=True,
        )
        for i, info in enumerate(tasks):
            self.tasks[info.task_id.value] = pb.Task(
                name=info.name, task_id=info.task_id, progress=0.0
            )
            self.speed[info.task_id.value] = 0.25 * (i + 1)
        libproc.delay(REPORT_INTERVAL, self.pid, Slave.report)

    def report(self) -> None:
        for task_id, task in self.tasks.items():
            task.progress = min(1.0, task.progress + self.speed[task_id])
        self.send(self.master, pb.ReportProgressMessage(tasks=list(self.tasks.values())))
        if any(t.progress < 1.0 for t in self.tasks.values()):
            libproc.delay(REPORT_INTERVAL, self.pid, Slave.report)

    def shutdown(self, sender: UPID, body: bytes) -> None:
        print(f"slave: shutdown from {sender.id}", flush=True)
        libproc.terminate(self.pid)

    def exited(self, pid: UPID) -> None:
        print("slave: lost the master; terminating", flush=True)
        libproc.terminate(self.pid)


async def run_slave(master: UPID) -> int:
    await libproc.start(host="127.0.0.1", port=0)
    slave = Slave(master)
    libproc.spawn(slave)
    await libproc.wait(slave)
    await libproc.stop()
    return 0


async def run_master(timeout: float) -> int:
    await libproc.start(host="127.0.0.1", port=0)
    master = Master()
    libproc.spawn(master)
    print(f"master: listening at {master.pid}", flush=True)
    child = subprocess.Popen(
        [sys.executable, "-m", "examples.master_slave", "slave", "--master", str(master.pid)]
    )
    try:
        await asyncio.wait_for(_await(master.done.future), timeout)
        rc = await asyncio.get_running_loop().run_in_executor(None, child.wait, 10)
        print(f"master: slave OS process exited with {rc}", flush=True)
        return 0 if rc == 0 else 1
    except TimeoutError:
        print(f"master: the slave did not finish within {timeout}s", file=sys.stderr)
        return 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await libproc.stop()


async def _await(f: libproc.Future[None]) -> None:
    await f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.master_slave",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", nargs="?", default="master", choices=["master", "slave"])
    parser.add_argument("--master", help="the master's UPID (role slave)")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.role == "slave":
        if not args.master:
            parser.error("a slave needs --master master@HOST:PORT")
        try:
            master = UPID.parse(args.master)
        except libproc.InvalidUPIDError as exc:
            parser.error(str(exc))
        return asyncio.run(run_slave(master))
    return asyncio.run(run_master(args.timeout))


if __name__ == "__main__":
    sys.exit(main())
