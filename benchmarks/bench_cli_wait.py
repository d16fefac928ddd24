"""How many HTTP requests `cluster submit --wait --count N` makes, with the master's event
stream and without it (polling), against the same real cluster in the same run.

    python -m benchmarks.bench_cli_wait [--count 200] [--runs 3] [--command 'sleep 1']

A real `cluster up` (a master and 2 slaves of 2 cpus, so 40 tasks of 0.1 cpu run at once)
serves every run. The `cluster` command talks to it through `tests/test_cli_event_front`,
which counts every request the command makes and serves `/master/events` from a real
EventHub fed by what changes on the master (its own looks at the master are not counted).
Baseline: the same command when `/master/events` answers 404, as a master without the
stream does — the CLI then polls (one listing of every task each 0.5 s, plus why tasks
wait). Printed: requests per run by kind, the command's wall time and CPU (user + system
of the `cluster` process, from getrusage), each as the median of `--runs`, and the
events/polling ratio (lower is better).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_cli_event_front import EventFront  # noqa: E402
from test_cli_support import clean_env, cluster_up, run_cli  # noqa: E402


def one_run(master: str, mode: str, count: int, command: str) -> tuple[Counter[str], float, float]:
    with EventFront(master, events=mode) as front:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        result = run_cli("submit", "--count", str(count), "--wait", command, master=front.address,
                         timeout=600, env=clean_env())
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"submit --wait failed ({mode}): {result.stderr[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return front.summary(), wall, cpu


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--command", default="sleep 1")
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[Counter[str], float, float]]] = {"on": [], "absent": []}
    with tempfile.TemporaryDirectory(prefix="bench-cli-wait-") as work:
        with cluster_up(Path(work), 2) as (master, _, _):
            for _ in range(args.runs):
                for mode in ("on", "absent"):  # interleaved: both see the same machine
                    results[mode].append(one_run(master, mode, args.count, args.command))
    print(f"cluster submit --count {args.count} --wait {args.command!r}; master + 2 slaves, "
          f"median of {args.runs}")
    medians = {}
    for mode, label in (("absent", "polling (no /master/events)"), ("on", "events")):
        runs = results[mode]
        totals = [sum(c.values()) for c, _, _ in runs]
        kinds = sorted({k for c, _, _ in runs for k in c})
        medians[mode] = statistics.median(totals)
        by_kind = ", ".join(f"{k} {statistics.median(c[k] for c, _, _ in runs):g}"
                            for k in kinds)
        print(f"  {label:28} {medians[mode]:6g} requests (runs: {totals}); {by_kind}; "
              f"wall {statistics.median(w for _, w, _ in runs):.1f}s, "
              f"CLI CPU {statistics.median(c for _, _, c in runs):.2f}s")
    print(f"  events / polling: {medians['on'] / max(medians['absent'], 1):.3f}x the requests "
          f"(polling = 1.00x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
