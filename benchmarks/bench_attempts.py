"""What keeping every attempt costs the master's store: a task's life, saved with its attempt
rows, beside the same saves without them (the baseline, in the same run).

    python -m benchmarks.bench_attempts [--tasks 2000] [--runs 5]

Each run saves `--tasks` tasks through a real SQLite store the way the master does (STAGING,
RUNNING, then FINISHED: three saves each, batched by the store's writer thread), with the
attempt log observing every change and, in the measured case, the ended attempt's row
written in the same transaction as the task. The figure is CPU per task (all threads:
`time.process_time`), median of the runs; the ratio is with rows over without.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from master.attempts import AttemptLog
from master.store import Store
from master.tasks import FINISHED, RUNNING, TaskRecord


async def _one_run(tasks: int, with_rows: bool) -> float:
    """CPU milliseconds per task for one run."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(str(Path(tmp) / "bench.db"))
        log = AttemptLog()
        recs = [TaskRecord.new(str(i), command="true", cpus=1, mem=1, now=1.0)
                for i in range(1, tasks + 1)]
        start = time.process_time()
        for step in range(3):
            saves = []
            for rec in recs:
                if step == 0:
                    rec.launch("s1", 2.0)
                elif step == 1:
                    rec.transition(RUNNING, 3.0, attempt=1)
                else:
                    rec.transition(FINISHED, 4.0, attempt=1, exit_code=0)
                log.observe(rec)
                saves.append(store.save(rec, log.rows(rec) if with_rows else ()))
            await asyncio.gather(*saves)
        cpu = time.process_time() - start
        await store.close()
    return cpu / tasks * 1000


async def _measure(tasks: int, runs: int) -> tuple[float, float]:
    without, with_rows = [], []
    for _ in range(runs):  # interleaved, so both see the same machine
        without.append(await _one_run(tasks, False))
        with_rows.append(await _one_run(tasks, True))
    return statistics.median(with_rows), statistics.median(without)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.runs < 1:
        parser.error("--tasks and --runs must be at least 1")
    measured, baseline = asyncio.run(_measure(args.tasks, args.runs))
    print(f"{'':30}{'with attempt rows':>20}{'without (baseline)':>22}{'ratio':>8}")
    print(f"{'store CPU per task (3 saves)':30}{measured:>17.3f} ms{baseline:>19.3f} ms"
          f"{measured / baseline:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
