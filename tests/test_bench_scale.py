"""The scale benchmark stays runnable: a tiny run prints every figure beside its baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster_harness import REPO

pytestmark = pytest.mark.timeout(240)


def test_tiny_scale_benchmark_prints_every_figure_and_its_baseline() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--tasks", "3000",
                          "--active", "200", "--updates", "100"], cwd=REPO,
                         capture_output=True, text=True, timeout=220)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3,000 ended + 200 active tasks (tasks_total 3300)" in out.stdout
    for line in ("RSS, every task ended", "restart: kill -9 to serving", "GET /master/vars",
                 "page of 100: middle page", "page of 100: state=KILLED,LOST, middle",
                 "page of 100: name=bench-5, middle", "page of 100: name=bench-5+KILLED, middle",
                 "page of 100: name=bench-+KILLED (every one), middle",
                 "page of 100: name=bench- (all but a few), middle", "RSS after the pages below",
                 "status updates, 100 tasks"):
        assert line in out.stdout, out.stdout
    assert out.stdout.count("raw sqlite3, same file") == 12
