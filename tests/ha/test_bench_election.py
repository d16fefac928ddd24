"""The election benchmark stays runnable: a one-round run prints both figures and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_round_of_the_election_benchmark_prints_each_figure_beside_its_baseline() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_election", "--rounds", "1",
         "--session-timeout", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any("kill -9 of the leader" in x and "session timeout" in x and "ratio" in x
               for x in lines), out.stdout
    assert any("SIGTERM (withdraw)" in x and "round trip" in x and "ratio" in x
               for x in lines), out.stdout
    assert out.stderr == ""
