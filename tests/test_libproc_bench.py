"""The benchmark stays runnable: a tiny run prints all three sections with their baselines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_libproc import encode
from libproc.wire import encode_message

ROOT = Path(__file__).resolve().parent.parent


def test_baseline_peer_speaks_the_same_bytes_as_libproc() -> None:
    for body in (b"", b"x" * 32, bytes(range(256))):
        assert encode("a@1.2.3.4:5", "pong", "ping", "1.2.3.4:6", body) == encode_message(
            "a@1.2.3.4:5", "pong", "ping", "1.2.3.4:6", body
        )


@pytest.mark.timeout(90)
def test_tiny_benchmark_run_prints_every_figure_beside_its_baseline() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--count",
            "300",
            "--runs",
            "1",
            "--round-trips",
            "20",
            "--local",
            "2000",
            "--dispatches",
            "2000",
            "--asks",
            "500",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=80,
        check=False,
    )
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    for needle in (
        "1. Local messages",
        "baseline: asyncio.Queue pair",
        "libproc / asyncio.Queue pair",
        "2. Local dispatch",
        "Pykka 4.5 ThreadingActor tell",
        "libproc / Pykka tell",
        "libproc / asyncio queue actor",
        "3. One call at a time",
        "libproc / asyncio future round trip",
        "4. Remote pipelined ping-pong",
        "libproc (examples.pingpong)",
        "baseline: asyncio streams",
        "pong CPU/message",
        "5. Remote round-trip latency",
        "p50",
        "p99",
        "libproc / baseline",
    ):
        assert needle in text, text
    assert "not installed" not in text, text  # Pykka is in the test extra: a missing one fails
    local = re.findall(r"^   libproc / .*?(\d+\.\d\d)x\s+\(target >= [\d.]+x: (?:met|NOT met); "
                       r"rounds \d+\.\d\d-\d+\.\d\d\)$", text, re.M)
    assert len(local) == 4, text


@pytest.mark.timeout(90)
def test_local_only_leaves_the_remote_sections_out() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_libproc", "--local-only", "--runs", "1",
         "--local", "500", "--dispatches", "500", "--asks", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3. One call at a time" in out.stdout
    assert "Remote" not in out.stdout
