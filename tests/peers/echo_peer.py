"""A libproc peer in its own OS process, for the loopback integration tests.

    python tests/peers/echo_peer.py [--port P]

Prints `READY <upid of process "echo">` once it listens, then serves until SIGTERM/SIGINT or
until its stdin closes (so it never outlives the test that started it). Process `echo`:

- `cluster.ReportProgressMessage` (tasks unpacked) -> replies `cluster.LaunchTasksMessage`
  with `id` = number of tasks and one TaskInfo per task (same name and task_id);
- `cluster.LaunchTasksMessage` (whole message) -> replies `cluster.ReportProgressMessage`
  with one Task per TaskInfo, progress 1.0;
- raw `seq` -> links the sender (once), sends `seq` back with the same body;
- raw `ping` -> sends `pong` back with the same body.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

import libproc
from libproc import UPID, ProtobufProcess
from protos import cluster_pb2 as pb


class Echo(ProtobufProcess):
    def __init__(self) -> None:
        super().__init__("echo")
        self.linked: set[UPID] = set()

    def initialize(self) -> None:
        self.install(pb.ReportProgressMessage, self.report_progress, "tasks")
        self.install(pb.LaunchTasksMessage, self.launch_tasks)
        self.install("seq", self.seq)
        self.install("ping", lambda sender, body: self.send(sender, "pong", body))

    def report_progress(self, sender: UPID, tasks: list[pb.Task]) -> None:
        self.reply(
            pb.LaunchTasksMessage(
                id=len(tasks),
                tasks=[
                    pb.TaskInfo(name=t.name, task_id=t.task_id, command=f"run {t.name}")
                    for t in tasks
                ],
            )
        )

    def launch_tasks(self, sender: UPID, message: pb.LaunchTasksMessage) -> None:
        self.send(
            sender,
            pb.ReportProgressMessage(
                tasks=[pb.Task(name=t.name, task_id=t.task_id, progress=1.0) for t in message.tasks]
            ),
        )

    def seq(self, sender: UPID, body: bytes) -> None:
        if sender not in self.linked:
            self.linked.add(sender)
            self.link(sender)
        self.send(sender, "seq", body)

    def exited(self, pid: UPID) -> Any:
        self.linked.discard(pid)


async def main(port: int) -> None:
    await libproc.start(host="127.0.0.1", port=port)
    echo = Echo()
    libproc.spawn(echo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stdin = sys.stdin.fileno()
    loop.add_reader(stdin, lambda: stop.set() if not os.read(stdin, 1) else None)
    print(f"READY {echo.pid}", flush=True)
    await stop.wait()
    await libproc.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
