"""benchmarks/bench_attempts stays runnable: a tiny run prints its figure beside the baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_attempts_benchmark_prints_the_figure_with_a_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_attempts", "--tasks", "50", "--runs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert re.search(r"^store CPU per task \(3 saves\)\s+\d+\.\d{3} ms\s+\d+\.\d{3} ms\s+"
                     r"\d+\.\d\dx$", out, re.M), out


def test_bad_arguments_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_attempts", "--tasks", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "at least 1" in result.stderr
