"""The seed's future chains: dispatch -> then -> then, and second/third on a ready future.

    python -m examples.future_chain

1. `dispatch(pid, func1)` returns a future that `func2(42)` completes. `.then(...)` sets a
   promise to `i == 42` and returns its future (a callback may return a future: the chain
   waits for it); the next `.then(...)` posts `stop` to the process when that is true.
2. The seed's `TEST(Process, chain)`: `ready_future().then(second).then(third)` gives "good".
3. A failure skips the rest of a chain, and `repair` recovers it.
"""

from __future__ import annotations

import asyncio
import sys

import libproc
from libproc import UPID, Future, Process, Promise


class MyProcess(Process):
    def __init__(self) -> None:
        super().__init__("chain")
        self.promise: Promise[int] = Promise()

    def initialize(self) -> None:
        self.install("stop", self.stop)

    def func1(self) -> Future[int]:
        return self.promise.future

    def func2(self, i: int) -> None:
        self.promise.set(i)

    def stop(self, sender: UPID, body: bytes) -> None:
        print(f"{self.id}: 'stop' received; terminating", flush=True)
        libproc.terminate(self.pid)


def second(b: bool) -> Future[int]:
    return Future.ready(1 if b else 0)


def third(s: int) -> Future[str]:
    return Future.ready("good" if s > 0 else "bad")


async def main() -> int:
    await libproc.start(host="127.0.0.1", port=0)

    # 1. dispatch -> then -> then, as in the seed's main().
    process = MyProcess()
    pid = libproc.spawn(process)
    p: Promise[bool] = Promise()

    def is_42(i: int) -> Future[bool]:
        print(f"then #1: func1 gave {i}", flush=True)
        p.set(i == 42)
        return p.future

    def maybe_stop(b: bool) -> bool:
        print(f"then #2: i == 42 is {b}", flush=True)
        if b:
            process.send(pid, "stop")  # the seed's post(pid, "stop")
        return True

    chain = libproc.dispatch(pid, MyProcess.func1).then(is_42).then(maybe_stop)
    libproc.dispatch(pid, MyProcess.func2, 42)
    print(f"chain result: {await chain}", flush=True)
    print(f"wait({pid.id}) -> {await libproc.wait(pid)}", flush=True)

    # 2. readyFuture().then(second).then(third)
    s = Future.ready(True).then(second).then(third)
    print(f"ready_future().then(second).then(third) -> {s.get()!r}", flush=True)

    # 3. A failure skips the rest of the chain; repair() recovers it.
    def explode(_: int) -> int:
        raise ValueError("no such task")

    failed = Future.ready(1).then(explode).then(lambda v: v + 1)
    print(f"failed chain: {failed.state} ({failed.failure()})", flush=True)
    print(f"repaired: {failed.repair(lambda f: -1).get()}", flush=True)

    await libproc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
