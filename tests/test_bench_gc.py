"""The garbage collector's benchmark stays runnable: a tiny run prints its figures beside
its baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster_harness import REPO

pytestmark = pytest.mark.timeout(120)


def test_tiny_gc_benchmark_prints_the_figure_and_its_baseline(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_gc", "--sandboxes", "300",
                          "--dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr
    assert "300 sandboxes" in out.stdout and "baseline shutil.rmtree" in out.stdout
    assert "x the baseline" in out.stdout and "longest loop stall" in out.stdout
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
