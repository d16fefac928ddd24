"""The submit benchmark stays runnable: a tiny run prints its figure beside its baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster_harness import REPO

pytestmark = pytest.mark.timeout(120)


def test_tiny_submit_benchmark_prints_the_figure_and_its_baseline() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_submit", "--submits", "40",
                          "--clients", "4"], cwd=REPO, capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr
    assert "POST /master/tasks" in out.stdout and "GET /master/vars (base)" in out.stdout
    assert "ratio" in out.stdout and "40 tasks stored" in out.stdout
