"""Helpers for the end-to-end tests of the `cluster` command (no tests here).

The tests run the installed command as a user would, in subprocesses, on 127.0.0.1 with
free ports and tmp_path work directories. Every wait is bounded; every process started is
stopped in a `finally` (SIGTERM, bounded wait, then SIGKILL of whatever is left).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCRIPT = Path(sys.executable).parent / "cluster"
#: How to run the command: the installed console script, else the module.
CLUSTER: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli.main"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any CLUSTER_* / LIBPROCESS_* of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_", "LIBPROCESS_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str, master: str | None = None, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cluster ARGS...` to completion (bounded) and capture its output."""
    environment = env if env is not None else clean_env()
    if master is not None:
        environment = {**environment, "CLUSTER_MASTER": master}
    return subprocess.run(
        [*CLUSTER, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def run_json(*args: str, master: str, timeout: float = 30.0) -> Any:
    result = run_cli(*args, "--json", master=master, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A failed command: non-zero exit, exactly one `error: ...` line, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Running:
    """A long-running `cluster` process whose output is collected by reader threads."""

    proc: subprocess.Popen[str]
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    def stdout_text(self) -> str:
        return "".join(self.out)

    def stderr_text(self) -> str:
        return "".join(self.err)


def _pump(stream: Any, sink: list[str]) -> None:
    sink.extend(iter(stream.readline, ""))
    stream.close()


def spawn(argv: list[str], env: dict[str, str], **kwargs: Any) -> Running:
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    running = Running(proc)
    for stream, sink in ((proc.stdout, running.out), (proc.stderr, running.err)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    return running


def stop(running: Running, extra_pids: Sequence[int] = (), grace: float = 20.0) -> int | None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL it and every pid in `extra_pids`."""
    proc = running.proc
    code: int | None = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for pid in extra_pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code


@contextmanager
def cluster_up(
    work_dir: Path, slaves: int = 2, *extra: str, ready_timeout: float = 40.0
) -> Iterator[tuple[str, Running, list[int]]]:
    """`cluster up` on a free port; yields (HOST:PORT, the process, its children's pids)."""
    port = free_port()
    running = spawn(
        [
            *CLUSTER,
            "up",
            "--slaves",
            str(slaves),
            "--port",
            str(port),
            "--work-dir",
            str(work_dir),
            "--cpus",
            "2",
            "--mem",
            "1024",
            *extra,
        ],
        clean_env(),
    )
    children: list[int] = []
    try:
        wait_until(
            lambda: "Press Ctrl-C" in running.stdout_text() or running.proc.poll() is not None,
            ready_timeout,
            "cluster up to be ready",
        )
        assert running.proc.poll() is None, (running.stdout_text(), running.stderr_text())
        children = children_of(running.proc.pid)
        yield f"127.0.0.1:{port}", running, children
    finally:
        stop(running, children + [c for pid in children for c in children_of(pid)])
