"""The store alone: what the leader epoch check costs each write transaction.

    python -m benchmarks.bench_store [--tasks 2000] [--window 64] [--runs 3] [--postgres]

Each task's life as the master writes it: one ``create_tasks`` (an id and the new row), then
three ``save``s (STAGING, RUNNING, FINISHED), with ``window`` tasks in flight at once, so
the writer batches as it does under load. Measured on a fresh SQLite file (and with
``--postgres`` on a private PostgreSQL, as `make ha-test` starts one: needs its packages).

The baseline, in the same run and on the same database, is a store that never claimed
leadership (a single master: nothing is checked). The figure is a store that claimed, so
that every write transaction first reads the epoch (``SELECT … FOR SHARE`` on PostgreSQL).
The ratio is claimed tasks/s over unclaimed; runs alternate, and the median is printed.
The writer thread's own CPU per commit (from /proc) shows the check's cost best, since the
machine's other work moves tasks/s far more than the check does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from master.store import Store
from master.tasks import RUNNING, TaskRecord


def _make(numbers: list[int]) -> list[TaskRecord]:
    return [TaskRecord.new(str(n), command="true", cpus=0.1, mem=1, now=1.0) for n in numbers]


async def _workload(store: Store, tasks: int, window: int) -> tuple[float, float, float]:
    """(tasks/s, writer CPU ms per commit, commits per task) for `tasks` lives, `window` at
    a time."""
    left = tasks

    async def life() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            [record] = await store.create_tasks(_make, 1)
            record.launch("s1", 2.0)
            await store.save(record)
            record.transition(RUNNING, 3.0, attempt=record.attempts)
            await store.save(record)
            record.transition("FINISHED", 4.0, attempt=record.attempts, exit_code=0)
            await store.save(record)

    writer = store._writer.thread.native_id
    cpu, start = _thread_cpu(writer), time.perf_counter()
    commits = store.stats()["batches_committed"]
    await asyncio.gather(*[life() for _ in range(window)])
    elapsed, used = time.perf_counter() - start, _thread_cpu(writer) - cpu
    done = store.stats()["batches_committed"] - commits
    return tasks / elapsed, used / done * 1000, done / tasks


def _thread_cpu(tid: int | None) -> float:
    """CPU seconds of one thread of this process: schedstat's nanoseconds on CPU, else
    stat's user + system ticks."""
    task = Path(f"/proc/self/task/{tid}")
    try:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(url: str, tasks: int, window: int, claimed: bool
                   ) -> tuple[float, float, float]:
    store = Store.open(url, progress_interval=60.0)
    try:
        if claimed:
            await store.claim_leadership("bench")
        await _workload(store, min(200, tasks), window)  # warm up
        return await _workload(store, tasks, window)
    finally:
        await store.close()


def _compare(name: str, urls: list[str], args: argparse.Namespace) -> None:
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for run in range(args.runs):
        for claimed in (False, True) if run % 2 == 0 else (True, False):
            figures[claimed].append(asyncio.run(_measure(
                urls[2 * run + claimed], args.tasks, args.window, claimed)))

    def median(claimed: bool, i: int) -> float:
        return statistics.median(f[i] for f in figures[claimed])

    for claimed, label in ((True, "claimed (epoch checked)"), (False, "unclaimed (base)")):
        spread = ", ".join(f"{f[0]:,.0f}" for f in figures[claimed])
        print(f"{name:<11} {label:<24} {median(claimed, 0):>7,.0f} tasks/s "
              f"{median(claimed, 1):.3f} ms writer CPU/commit  {median(claimed, 2):.3f} "
              f"commits/task  (tasks/s: {spread})")
    print(f"{name:<11} ratio claimed/unclaimed: {median(True, 0) / median(False, 0):.2f}x "
          f"tasks/s, {median(True, 1) / median(False, 1):.2f}x writer CPU per commit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", action="store_true",
                        help="also on a private PostgreSQL (tests/ha_servers.py)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.window < 1 or args.runs < 1:
        parser.error("--tasks, --window and --runs must be at least 1")
    print(f"bench_store: {args.tasks} tasks (a create and 3 saves each), {args.window} in "
          f"flight, median of {args.runs}")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        files = [str(Path(tmp) / f"run{i}.db") for i in range(2 * args.runs)]
        _compare("sqlite", files, args)
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from ha_servers import PostgresServer, missing_prerequisites  # the tests' servers

        missing = missing_prerequisites()
        if missing:
            print(f"postgres: cannot run: {'; '.join(missing)}", file=sys.stderr)
            return 1
        server = PostgresServer()
        try:
            server.start()
            urls = [server.create_database(f"run{i}") for i in range(2 * args.runs)]
            _compare("postgresql", urls, args)
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
