"""benchmarks/bench_dispatch stays runnable: a tiny run prints each figure beside its baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_tiny_dispatch_benchmark_prints_every_figure_with_a_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_dispatch", "--count", "500", "--runs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    for name in ("dispatch", "then", "promise"):
        assert re.search(rf"^\s+{name}\s+[\d,]+\s+.+\s+[\d,]+\s+\d+\.\d\dx$", out, re.M), out


def test_bad_arguments_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_dispatch", "--count", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "at least 1" in result.stderr
