"""The store benchmark stays runnable: a tiny run prints its figure beside its baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster_harness import REPO

pytestmark = pytest.mark.timeout(120)


def test_tiny_store_benchmark_prints_the_claimed_figure_beside_the_unclaimed_base() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_store", "--tasks", "50",
                          "--window", "8", "--runs", "1"], cwd=REPO, capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "claimed (epoch checked)" in out.stdout and "unclaimed (base)" in out.stdout
    assert "ratio claimed/unclaimed" in out.stdout and "commits/task" in out.stdout


def test_store_benchmark_refuses_nonsense_arguments() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_store", "--tasks", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=100)
    assert out.returncode == 2 and "must be at least 1" in out.stderr
