"""The slave's garbage collector (slave/gc.py) on many sandboxes, beside a baseline of the
same run.

    python -m benchmarks.bench_gc [--sandboxes 100000] [--dir /dev/shm]

Each sandbox is a directory with `stdout` and `stderr` (three inodes, as a task leaves them),
made in a fresh directory under `--dir` (default /dev/shm, a tmpfs: on some disks making a
directory costs 0.5 ms, which would measure the disk, not the collector).

Baseline: `shutil.rmtree` of an equal `sandboxes/` directory in one call on the event loop,
the least any removal costs, and what a collector that deleted on the loop would stall it
for. Measured: the collector's recovery (the scan) and collection of the same number, due
under `--gc-delay`, with the event loop's longest stall meanwhile (a ticker's largest gap),
the time per sandbox and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import libproc
from libproc import Process
from slave.gc import GarbageCollector, GcConfig


def make_sandboxes(root: Path, n: int) -> None:
    boxes = root / "sandboxes"
    boxes.mkdir(parents=True)
    old = time.time() - 7200
    for i in range(n):
        d = boxes / f"{i}@1"
        d.mkdir()
        for name in ("stdout", "stderr"):
            with open(d / name, "wb") as f:
                f.write(b"x\n")
        os.utime(d, (old, old))


class Ticker:
    """Records the largest gap between ticks of a 1 ms ticker on the loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def baseline(root: Path, n: int) -> tuple[float, float]:
    make_sandboxes(root, n)
    with Ticker() as ticker:
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        shutil.rmtree(root / "sandboxes")  # on the loop: it stalls for all of it
        took = time.perf_counter() - start
        await asyncio.sleep(0.01)
    return took, max(ticker.worst, took)


async def collector(root: Path, n: int) -> tuple[float, float, float]:
    make_sandboxes(root, n)
    host = Process("bench-gc")
    libproc.spawn(host)
    gc = GarbageCollector(root, GcConfig(delay=3600, watermark=1.0), host.pid, set)
    with Ticker() as ticker:
        start = time.perf_counter()
        await gc.recover()
        scanned = time.perf_counter() - start
        while gc.counts["gc_sandboxes_collected"] < n or gc._running:
            await asyncio.sleep(0.005)
        took = time.perf_counter() - start
    gc.close()
    assert not os.listdir(root / "sandboxes"), "sandboxes left"
    return scanned, took, ticker.worst


async def run(n: int, where: str) -> None:
    await libproc.start(host="127.0.0.1", port=0)
    try:
        with tempfile.TemporaryDirectory(dir=where) as tmp:
            base_took, base_stall = await baseline(Path(tmp) / "baseline", n)
            scanned, took, stall = await collector(Path(tmp) / "gc", n)
    finally:
        await libproc.stop()
    print(f"{n} sandboxes in {where}")
    print(f"baseline shutil.rmtree on the loop: {base_took:.2f} s "
          f"({1e6 * base_took / n:.1f} us each), loop stalled {1e3 * base_stall:.0f} ms")
    print(f"collector: scan {scanned:.2f} s, all collected in {took:.2f} s "
          f"({1e6 * took / n:.1f} us each, {took / base_took:.2f}x the baseline), "
          f"longest loop stall {1e3 * stall:.1f} ms ({stall / base_stall:.4f}x the baseline's)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=100_000)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args(argv)
    asyncio.run(run(args.sandboxes, args.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
