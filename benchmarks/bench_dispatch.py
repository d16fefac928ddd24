"""libproc's local hot paths, each beside an asyncio baseline measured in the same run.

    python -m benchmarks.bench_dispatch             # --count 200000 --runs 5

1. dispatch: `dispatch(pid, Target.add, 1)` N times to one process, then await the last
   Future; baseline: N `loop.call_soon` calls each completing an asyncio.Future.
2. then: N promises, each with one `.then(fn)`, then completed; baseline: N asyncio.Futures,
   each with one `add_done_callback`, then completed.
3. promise: N Promises created, completed and dropped (the abandonment check runs at each
   drop); baseline: N asyncio.Futures created, completed and dropped.

Each figure is the median of `--runs` runs, in operations per second of this process's CPU
time (steadier than wall time on a shared machine), with its ratio to the baseline (higher is
better). Only public libproc API is used, so the same script measures an
older libproc too (put it first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import libproc
from libproc import Process, Promise, dispatch


class Target(Process):
    def __init__(self) -> None:
        super().__init__("target")
        self.total = 0

    def add(self, n: int) -> int:
        self.total += n
        return self.total


async def _dispatches(count: int, pid: libproc.UPID) -> float:
    start = time.process_time()
    last = None
    for _ in range(count):
        last = dispatch(pid, Target.add, 1)
    assert last is not None
    await last
    return time.process_time() - start


async def _call_soons(count: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.process_time()
    last: asyncio.Future[int] | None = None
    total = [0]

    def run(fut: asyncio.Future[int]) -> None:
        total[0] += 1
        fut.set_result(total[0])

    for _ in range(count):
        last = loop.create_future()
        loop.call_soon(run, last)
    assert last is not None
    await last
    return time.process_time() - start


async def _thens(count: int) -> float:
    start = time.process_time()
    for i in range(count):
        p: Promise[int] = Promise()
        p.future.then(lambda v: v + 1)
        p.set(i)
    return time.process_time() - start


async def _done_callbacks(count: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.process_time()
    for i in range(count):
        f: asyncio.Future[int] = loop.create_future()
        f.add_done_callback(lambda fut: fut.result() + 1)
        f.set_result(i)
    await asyncio.sleep(0)  # asyncio runs done callbacks on the next turn: include them
    return time.process_time() - start


async def _promises(count: int) -> float:
    start = time.process_time()
    for i in range(count):
        p: Promise[int] = Promise()
        p.set(i)
        del p
    return time.process_time() - start


async def _asyncio_futures(count: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.process_time()
    for i in range(count):
        f: asyncio.Future[int] = loop.create_future()
        f.set_result(i)
        del f
    return time.process_time() - start


async def _median_rate(bench: Callable[[int], Awaitable[float]], count: int, runs: int
                       ) -> float:
    rates = []
    for _ in range(runs):
        gc.collect()
        rates.append(count / await bench(count))
    return statistics.median(rates)


async def run(count: int, runs: int) -> list[tuple[str, float, str, float]]:
    await libproc.start(host="127.0.0.1", port=0)
    try:
        target = Target()
        pid = libproc.spawn(target)
        await libproc.dispatch(pid, Target.add, 0)

        async def dispatches(n: int) -> float:
            return await _dispatches(n, pid)

        rows = [
            ("dispatch", await _median_rate(dispatches, count, runs),
             "loop.call_soon + asyncio.Future", await _median_rate(_call_soons, count, runs)),
            ("then", await _median_rate(_thens, count, runs),
             "asyncio.Future.add_done_callback", await _median_rate(_done_callbacks, count,
                                                                   runs)),
            ("promise", await _median_rate(_promises, count, runs),
             "asyncio.Future", await _median_rate(_asyncio_futures, count, runs)),
        ]
    finally:
        await libproc.stop()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.count < 1 or args.runs < 1:
        parser.error("--count and --runs must be at least 1")
    print(f"libproc local hot paths: Python {platform.python_version()}, "
          f"{args.count:,} operations, median of {args.runs} runs, beside a same-run baseline")
    rows = asyncio.run(run(args.count, args.runs))
    print(f"   {'what':<10}{'libproc ops/s':>15}   {'baseline':<34}{'ops/s':>12}   ratio")
    for name, rate, base_name, base_rate in rows:
        print(f"   {name:<10}{rate:>15,.0f}   {base_name:<34}{base_rate:>12,.0f}   "
              f"{rate / base_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
