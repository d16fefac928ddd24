"""slave.main: the open-files limit a slave runs with (each running task holds two fds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import resource
from slave.main import raise_fd_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
print(raise_fd_limit(300), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(raise_fd_limit(200), resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # never lowered
"""


def test_raise_fd_limit_raises_the_soft_limit_within_the_hard_one() -> None:
    resource = pytest.importorskip("resource")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip(f"hard open-files limit {hard} is too low to test")
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=30).stdout.split("\n")
    assert out[:2] == ["300 300", "300 300"]
