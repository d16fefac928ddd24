"""libproc's local hot paths and their baselines, for benchmarks/bench_libproc.py.

Each function measures one thing in this OS process's CPU time (`time.process_time`, every
thread included: steadier than wall time on a shared machine, and fair to Pykka's threads) and
returns a rate. The libproc ones take a running libproc; the baselines need nothing of ours.

- `send_pair` / `queue_pair`: N pings from one actor to another, each answered by a pong
  (libproc `send` between two processes; two asyncio tasks on two asyncio.Queues).
- `dispatch_burst` / `pykka_tell` / `queue_actor`: N calls of a method that only counts,
  waiting for the last (`libproc.dispatch(pid, Sink.hit)`; Pykka 4.5's `ThreadingActor` tell;
  an asyncio task taking (method, args) off an asyncio.Queue and calling it).
- `ask_one_at_a_time` / `future_round_trip`: N times `await libproc.dispatch(pid, Sink.hit)`;
  N times an asyncio.Future completed from `loop.call_soon` and awaited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["send_pair", "queue_pair", "dispatch_burst", "has_pykka", "pykka_tell",
           "queue_actor", "ask_one_at_a_time", "future_round_trip"]


# -- local send between two processes -------------------------------------------------


async def send_pair(n: int) -> float:
    """Messages/s (pings + pongs) between two libproc processes in this OS process."""
    import libproc
    from libproc import UPID, Process, Promise

    class Pong(Process):
        def initialize(self) -> None:
            self.install("ping", lambda sender, body: self.send(sender, "pong", body))

    class Ping(Process):
        def __init__(self, to: UPID) -> None:
            super().__init__(prefix="local-ping")
            self.to = to
            self.received = 0
            self.done: Promise[float] = Promise()
            self.started = 0.0

        def initialize(self) -> None:
            self.install("pong", self.pong)

        def go(self) -> None:
            self.started = time.process_time()
            body = b"x" * 32
            for _ in range(n):
                self.send(self.to, "ping", body)

        def pong(self, sender: UPID, body: bytes) -> None:
            self.received += 1
            if self.received == n:
                self.done.set(time.process_time() - self.started)

    pong = Pong(prefix="local-pong")
    libproc.spawn(pong)
    ping = Ping(pong.pid)
    libproc.spawn(ping)
    await libproc.dispatch(ping.pid, "initialize")  # both spawned and idle before timing
    libproc.dispatch(ping.pid, Ping.go)
    elapsed = await ping.done.future
    for proc in (ping, pong):
        libproc.terminate(proc)
        await libproc.wait(proc)
    return 2 * n / elapsed


async def queue_pair(n: int) -> float:
    """Items/s through two asyncio.Queues between two tasks (the same pattern, no libproc)."""
    q1: asyncio.Queue[bytes] = asyncio.Queue()
    q2: asyncio.Queue[bytes] = asyncio.Queue()

    async def echo() -> None:
        while True:
            q2.put_nowait(await q1.get())

    task = asyncio.ensure_future(echo())
    await asyncio.sleep(0)
    started = time.process_time()
    body = b"x" * 32
    for _ in range(n):
        q1.put_nowait(body)
    for _ in range(n):
        await q2.get()
    elapsed = time.process_time() - started
    task.cancel()
    return 2 * n / elapsed


# -- a burst of dispatches ------------------------------------------------------------


class _Sink:
    """A spawned process whose method `hit` only counts (made on first use: it needs libproc)."""

    def __init__(self) -> None:
        import libproc

        class Sink(libproc.Process):
            def __init__(self) -> None:
                super().__init__(prefix="sink")
                self.hits = 0

            def hit(self) -> int:
                self.hits += 1
                return self.hits

        self.process = Sink()
        self.pid = libproc.spawn(self.process)
        self.hit = Sink.hit

    async def close(self) -> None:
        import libproc

        libproc.terminate(self.process)
        await libproc.wait(self.process)


async def dispatch_burst(n: int) -> float:
    """Calls/s: N `libproc.dispatch(pid, Sink.hit)`, then awaiting the last Future."""
    from libproc import dispatch

    sink = _Sink()
    pid, hit = sink.pid, sink.hit
    await dispatch(pid, hit)
    started = time.process_time()
    last = None
    for _ in range(n):
        last = dispatch(pid, hit)
    assert last is not None
    count = await last
    elapsed = time.process_time() - started
    assert count == n + 1, count
    await sink.close()
    return n / elapsed


def has_pykka() -> bool:
    """Pykka is a test extra (`pip install -e '.[test]'`), not a dependency of libproc."""
    return importlib.util.find_spec("pykka") is not None


def pykka_tell(n: int) -> float:
    """Calls/s: N `ref.tell(...)` to a Pykka ThreadingActor that counts, waiting for the last."""
    import pykka

    done = threading.Event()

    class Sink(pykka.ThreadingActor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.hits = 0

        def on_receive(self, message: Any) -> Any:
            if message != "hit":  # an ask: how many so far
                return self.hits
            self.hits += 1
            if self.hits == n:
                done.set()
            return None

    ref = Sink.start()
    try:
        ref.ask("ready")  # the actor's thread runs before timing starts
        started = time.process_time()
        for _ in range(n):
            ref.tell("hit")
        if not done.wait(120):
            raise RuntimeError("Pykka's actor did not receive every message within 120 s")
        elapsed = time.process_time() - started
    finally:
        ref.stop()
    return n / elapsed


async def queue_actor(n: int) -> float:
    """Calls/s: N (method, args) put on an asyncio.Queue that a task takes and calls, waiting
    for the last (a plain asyncio actor, with no per-call result)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = asyncio.Queue()
    hits = [0]
    finished: asyncio.Future[int] = loop.create_future()

    def hit() -> None:
        hits[0] += 1
        if hits[0] == n:
            finished.set_result(hits[0])

    async def actor() -> None:
        while True:
            fn, args = await queue.get()
            fn(*args)

    task = asyncio.ensure_future(actor())
    await asyncio.sleep(0)
    started = time.process_time()
    put = queue.put_nowait
    for _ in range(n):
        put((hit, ()))
    await finished
    elapsed = time.process_time() - started
    task.cancel()
    return n / elapsed


# -- one call at a time ---------------------------------------------------------------


async def ask_one_at_a_time(n: int) -> float:
    """Round trips/s: N times `await libproc.dispatch(pid, Sink.hit)`, one after another."""
    from libproc import dispatch

    sink = _Sink()
    pid, hit = sink.pid, sink.hit
    await dispatch(pid, hit)
    started = time.process_time()
    for _ in range(n):
        await dispatch(pid, hit)
    elapsed = time.process_time() - started
    assert await dispatch(pid, hit) == n + 2
    await sink.close()
    return n / elapsed


async def future_round_trip(n: int) -> float:
    """Round trips/s: N times an asyncio.Future completed by a `loop.call_soon` callback that
    counts, and awaited."""
    loop = asyncio.get_running_loop()
    hits = [0]

    def hit(fut: asyncio.Future[int]) -> None:
        hits[0] += 1
        fut.set_result(hits[0])

    started = time.process_time()
    for _ in range(n):
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_soon(hit, fut)
        await fut
    elapsed = time.process_time() - started
    assert hits[0] == n
    return n / elapsed
