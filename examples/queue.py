"""The seed's Queue: a process owns the state, a plain object wraps it with dispatch.

    python -m examples.queue

`Queue.enqueue(item)` and `Queue.dequeue() -> Future` can be called from anywhere on the
loop; both run inside `QueueProcess`, one at a time, so the process needs no lock. A dequeue
on an empty queue returns a PENDING future that a later enqueue completes (the seed's
promise/future pair, generalised to many items and many waiting consumers). Closing the queue
terminates the process; consumers still waiting see their futures DISCARDED.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import Generic, TypeVar

import libproc
from libproc import Future, Process, Promise

T = TypeVar("T")


class QueueProcess(Process, Generic[T]):
    def __init__(self) -> None:
        super().__init__(prefix="queue")
        self.items: deque[T] = deque()
        self.waiters: deque[Promise[T]] = deque()

    def enqueue(self, item: T) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.set(item):  # False if that consumer discarded its future
                return
        self.items.append(item)

    def dequeue(self) -> Future[T]:
        if self.items:
            return Future.ready(self.items.popleft())
        waiter: Promise[T] = Promise()
        waiter.future.on_discard(waiter.discard)  # a consumer may give up waiting
        self.waiters.append(waiter)
        return waiter.future

    def finalize(self) -> None:
        for waiter in self.waiters:
            waiter.discard()


class Queue(Generic[T]):
    """The seed's wrapper: spawns the process, dispatches to it."""

    def __init__(self) -> None:
        self.process: QueueProcess[T] = QueueProcess()
        libproc.spawn(self.process)

    def enqueue(self, item: T) -> None:
        libproc.dispatch(self.process.pid, QueueProcess.enqueue, item)

    def dequeue(self) -> Future[T]:
        return libproc.dispatch(self.process.pid, QueueProcess.dequeue)

    async def close(self) -> None:
        libproc.terminate(self.process.pid, inject=False)  # finish what was queued first
        await libproc.wait(self.process.pid)


async def main() -> int:
    await libproc.start(host="127.0.0.1", port=0)
    queue: Queue[int] = Queue()

    # The seed: enqueue(42), then dequeue().then(use i).
    queue.enqueue(42)
    used = queue.dequeue().then(lambda i: f"dequeued {i}")
    print(await used, flush=True)

    # A consumer that waits: dequeue() before anything is there.
    early = queue.dequeue()
    await libproc.Clock.settle()
    print(f"dequeue() on an empty queue: {early.state}", flush=True)
    queue.enqueue(7)
    value = await early
    print(f"after enqueue(7): {early.state} with {value}", flush=True)

    # Many producers and consumers, order kept.
    for i in range(5):
        queue.enqueue(i)
    values = await libproc.collect([queue.dequeue() for _ in range(5)])
    print(f"five dequeues: {values}", flush=True)

    # Closing with a consumer still waiting discards its future.
    orphan = queue.dequeue()
    await queue.close()
    print(f"after close: waiting consumer's future is {orphan.state}", flush=True)

    await libproc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
