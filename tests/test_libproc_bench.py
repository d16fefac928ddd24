"""The benchmark stays runnable: a tiny run prints all three sections with their baselines."""

from __future__ import annotations

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
        "2. Remote pipelined ping-pong",
        "libproc (examples.pingpong)",
        "baseline: asyncio streams",
        "pong CPU/message",
        "3. Remote round-trip latency",
        "p50",
        "p99",
        "libproc / baseline",
    ):
        assert needle in text, text
