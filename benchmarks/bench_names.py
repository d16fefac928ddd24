"""Benchmark: a send routed by service name (`Mesh.send_stateless`) against a plain send to a
known UPID, in the same run, against the same echo instance.

    python -m benchmarks.bench_names [--count 20000] [--window 500] [--rounds 3]

This process runs an embedded name service and a sender; an echo instance
(`examples.mesh_pingpong`, which answers each number with the number plus one) runs in a
subprocess and registers as `bench.echo.local.1`. The sender keeps `--window` messages in
flight: every answer triggers the next send, either `send(upid, ...)` (plain) or
`mesh.send_stateless("bench.echo", ...)` (routed). Rounds alternate plain/routed; each figure
is the median of its rounds. Also printed: the sender's CPU per message, and the cost of the
send call alone (a tight loop of sends, no answers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import libproc
from libproc import UPID, Process, names

ROOT = Path(__file__).resolve().parent.parent
SEQ = "mesh_pingpong.seq"
QUERY = "bench.echo"


class Sender(Process):
    def __init__(self) -> None:
        super().__init__("bench-sender")
        self.target: UPID | None = None
        self.routed = False
        self.left = 0
        self.pending = 0
        self.done: libproc.Promise[None] = libproc.Promise()

    def initialize(self) -> None:
        self.mesh = names.Mesh(self)
        self.install(SEQ, self._answer)

    def _send(self) -> None:
        if self.routed:
            self.mesh.send_stateless(QUERY, SEQ, b"1")
        else:
            assert self.target is not None
            self.send(self.target, SEQ, b"1")

    def start(self, routed: bool, count: int, window: int) -> libproc.Future[None]:
        self.routed, self.left, self.pending = routed, count, 0
        self.done = libproc.Promise()
        for _ in range(min(window, count)):
            self.left -= 1
            self.pending += 1
            self._send()
        return self.done.future

    def _answer(self, sender: UPID, body: bytes) -> None:
        self.pending -= 1
        if self.left > 0:
            self.left -= 1
            self.pending += 1
            self._send()
        elif self.pending == 0:
            self.done.set(None)

    def call_cost(self, routed: bool, count: int) -> float:
        """Seconds per send call alone (messages are queued, then flushed after the loop)."""
        assert self.target is not None
        send, target, mesh = self.send, self.target, self.mesh
        t0 = time.perf_counter()
        if routed:
            for _ in range(count):
                mesh.send_stateless(QUERY, "bench.ignored", b"1")
        else:
            for _ in range(count):
                send(target, "bench.ignored", b"1")
        return (time.perf_counter() - t0) / count


async def _wait(f: libproc.Future[Any], timeout: float) -> Any:
    async def run() -> Any:
        return await f

    return await asyncio.wait_for(run(), timeout)


async def main_async(args: argparse.Namespace) -> int:
    address = await libproc.start(host="127.0.0.1", port=0)
    libproc.spawn(names.NameService())
    names.connect(address.with_id("names"))
    sender = Sender()
    libproc.spawn(sender)
    echo = subprocess.Popen(
        [sys.executable, "-m", "examples.mesh_pingpong", "--name", "bench.echo.local.1",
         "--names", f"names@{address.host}:{address.port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        found = await _wait(libproc.dispatch(sender, lambda: sender.mesh.resolve(QUERY)), 10)
        deadline = time.monotonic() + 15
        while not found and time.monotonic() < deadline:  # the cache follows the notices
            await asyncio.sleep(0.05)
            found = sender.mesh.lookup(QUERY)
        if not found:
            print("error: the echo instance did not register within 15s", file=sys.stderr)
            return 1
        sender.target = found[0].pid
        # Warm up both paths (connections, caches).
        for routed in (False, True):
            await _wait(libproc.dispatch(sender, Sender.start, routed, 2000, args.window), 30)

        rates: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for routed in (False, True):
                c0, t0 = time.process_time(), time.perf_counter()
                await _wait(libproc.dispatch(sender, Sender.start, routed, args.count,
                                             args.window), 120)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                rates[routed].append(args.count / wall)
                cpus[routed].append(cpu / args.count * 1e6)
        calls: dict[bool, float] = {False: float("inf"), True: float("inf")}
        for routed in (False, True, True, False, False, True):  # best of three, both orders
            cost = await _wait(libproc.dispatch(sender, Sender.call_cost, routed, args.count), 60)
            calls[routed] = min(calls[routed], cost * 1e6)
            await asyncio.sleep(0.2)  # let the queued messages go
    finally:
        echo.kill()
        echo.wait(timeout=5)
        await libproc.stop()

    plain, routed = statistics.median(rates[False]), statistics.median(rates[True])
    overhead = (plain / routed - 1) * 100
    print(f"bench_names: {args.count} round trips x {args.rounds} rounds, window "
          f"{args.window}, one echo instance in a subprocess (median of rounds)")
    print(f"  plain send to a known UPID : {plain:10,.0f} msg/s   sender CPU "
          f"{statistics.median(cpus[False]):5.1f} us/msg   send call {calls[False]:.2f} us")
    print(f"  send_stateless('{QUERY}')  : {routed:10,.0f} msg/s   sender CPU "
          f"{statistics.median(cpus[True]):5.1f} us/msg   send call {calls[True]:.2f} us")
    print(f"  ratio routed/plain = {routed / plain:.3f}  (overhead {overhead:+.1f}%; "
          f"target <= 15%: {'met' if overhead <= 15 else 'NOT met'})")
    print("  rounds plain : " + ", ".join(f"{r:,.0f}" for r in rates[False]))
    print("  rounds routed: " + ", ".join(f"{r:,.0f}" for r in rates[True]))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_names", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
