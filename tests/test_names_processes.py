"""The name service across OS processes on loopback: a name service, three instances and a
watcher or caller, each its own `sys.executable` subprocess.

Checked: Online notices when instances start; Offline at once on `kill -9` (the broken
socket), and within the heartbeat timeout on SIGSTOP (socket open, process stopped); a
stopped instance that resumes registers again; a restarted name service is re-populated by
the instances and followed again by the watcher with nothing restarted by hand; the
mesh_pingpong example carries on, losing nothing, when a pong is killed midway.
Every child is killed in `finally`; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A subprocess whose stdout lines are read by a thread into a queue."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 10.0, since: int | None = None) -> str:
        """The next line matching `pattern` (others are kept in `seen`); with `since`, a
        line already seen from that index on counts too."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        if since is not None:
            for line in self.seen[since:]:
                if regex.search(line):
                    return line
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no line matching {pattern!r} within "
                                     f"{timeout}s; saw:\n" + "\n".join(self.seen[-30:]))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if regex.search(line):
                return line

    def drain(self, seconds: float) -> list[str]:
        """Every line arriving within `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            out.append(line)
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


def spawn(children: list[Child], name: str, *args: str) -> Child:
    child = Child(name, *args)
    children.append(child)
    return child


def name_service(children: list[Child], port: int, *extra: str) -> Child:
    ns = spawn(children, "names", "-m", "libproc.names", "--port", str(port), *extra)
    ns.expect(r"name service listening at names@127\.0\.0\.1:%d" % port)
    return ns


def instance(children: list[Child], port: int, name: str, *extra: str) -> Child:
    return spawn(children, name, "-m", "examples.mesh_pingpong", "--name", name,
                 "--names", f"names@127.0.0.1:{port}", *extra)


def watcher(children: list[Child], port: int, query: str) -> Child:
    child = spawn(children, "watch", "-m", "libproc.names", "watch", query, "--json",
                  "--names", f"names@127.0.0.1:{port}")
    child.expect(r'"event": "ready", "query": "%s", "count": 0' % re.escape(query))
    return child


def event(child: Child, kind: str, name: str, timeout: float = 10.0,
          since: int = 0) -> dict[str, Any]:
    """The first `kind` event for `name` from line `since` of the watcher's output on."""
    line = child.expect(r'"event": "%s", "name": "%s"' % (kind, re.escape(name)), timeout,
                        since)
    return json.loads(line)  # type: ignore[no-any-return]


def test_online_on_start_offline_on_kill_and_on_sigstop(children: list[Child]) -> None:
    port = free_port()
    name_service(children, port, "--heartbeat-timeout", "1", "--recovery", "0")
    watch = watcher(children, port, "demo.pong")
    pongs = [instance(children, port, f"demo.pong.dev.{i}") for i in range(3)]
    for i, pong in enumerate(pongs):
        pong.expect(r"registered demo\.pong\.dev\.%d at pingpong@127\.0\.0\.1:\d+" % i)
        online = event(watch, "online", f"demo.pong.dev.{i}")
        assert online["user_data"] == f"os-pid={pong.proc.pid}"

    # kill -9: the socket breaks, the name service's link fires at once.
    t0 = time.monotonic()
    pongs[1].signal(signal.SIGKILL)
    offline = event(watch, "offline", "demo.pong.dev.1", timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert "lost the connection" in offline["reason"]

    # SIGSTOP: the socket stays open; the heartbeat (timeout 1 s) finds it out.
    t0 = time.monotonic()
    pongs[2].signal(signal.SIGSTOP)
    offline = event(watch, "offline", "demo.pong.dev.2", timeout=5)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 2.5, elapsed
    assert "heartbeat timeout" in offline["reason"]

    # Resumed, it reads the eviction notice and registers again by itself.
    mark = len(watch.seen)
    pongs[2].signal(signal.SIGCONT)
    event(watch, "online", "demo.pong.dev.2", timeout=5, since=mark)
    # The healthy instance never flapped.
    assert not any('"name": "demo.pong.dev.0"' in line and "offline" in line
                   for line in watch.seen)


def test_restarted_name_service_is_repopulated_without_restarting_anyone(
        children: list[Child]) -> None:
    port = free_port()
    # Recovery 3 s: longer than the clients' longest backoff (2 s + 20% jitter).
    ns = name_service(children, port, "--recovery", "3")
    watch = watcher(children, port, "demo.pong")
    pongs = [instance(children, port, f"demo.pong.dev.{i}") for i in range(3)]
    for i in range(3):
        event(watch, "online", f"demo.pong.dev.{i}")

    ns.signal(signal.SIGKILL)
    ns.proc.wait(timeout=5)
    time.sleep(0.5)  # everyone is retrying now
    name_service(children, port, "--recovery", "3")
    restarted = time.monotonic()

    # The instances re-register by themselves (backoff tops out at 2 s).
    deadline = time.monotonic() + 8
    listed: list[str] = []
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-m", "libproc.names", "list", "demo.pong", "--json",
             "--names", f"names@127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=10)
        listed = [json.loads(line)["name"] for line in out.stdout.splitlines()]
        if len(listed) == 3:
            break
        time.sleep(0.3)
    assert listed == ["demo.pong.dev.0", "demo.pong.dev.1", "demo.pong.dev.2"]

    # The watcher re-subscribed: it sees a newcomer, and the new service's links work.
    instance(children, port, "demo.pong.dev.3")
    event(watch, "online", "demo.pong.dev.3", timeout=8)
    mark = len(watch.seen)
    pongs[0].signal(signal.SIGKILL)
    event(watch, "offline", "demo.pong.dev.0", timeout=5, since=mark)
    # No instance flapped Offline while the service was away, recovering, or after.
    watch.drain(max(0.0, restarted + 3.5 - time.monotonic()))
    offline = [json.loads(line)["name"] for line in watch.seen if '"event": "offline"' in line]
    assert offline == ["demo.pong.dev.0"]
    assert all(p.proc.poll() is None for p in pongs[1:])  # nobody was restarted


def test_mesh_pingpong_carries_on_when_a_pong_is_killed(children: list[Child]) -> None:
    port = free_port()
    name_service(children, port)
    pongs = [instance(children, port, f"demo.pong.dev.{i}") for i in range(3)]
    for pong in pongs:
        pong.expect("registered")
    ping = instance(children, port, "demo.ping.dev.0", "--is-ping", "--target", "demo.pong",
                    "--count", "600", "--pace", "0.003", "--wait-for", "3",
                    "--timeout", "0.3", "--deadline", "30")
    ping.expect("progress 100", timeout=15)
    pongs[1].signal(signal.SIGKILL)
    ping.expect(r"offline demo\.pong\.dev\.1", timeout=5)
    summary = json.loads(ping.expect(r"^summary ", timeout=30)[len("summary "):])
    assert ping.proc.wait(timeout=10) == 0
    # Every number was answered once, in order, and none went to a known-offline instance.
    assert summary["answered"] == 300 and summary["last"] == 600
    assert summary["sent_after_offline"] == 0
    spread = summary["spread"]
    assert sum(spread.values()) == 300
    assert spread["demo.pong.dev.1"] < spread["demo.pong.dev.0"]
    # After the kill the two survivors shared the work evenly (round robin).
    after = 300 - 3 * spread["demo.pong.dev.1"]
    assert abs(spread["demo.pong.dev.0"] - spread["demo.pong.dev.2"]) <= 2 + after // 20
    for pong in (pongs[0], pongs[2]):
        pong.signal(signal.SIGTERM)
    answered = [int(p.expect(r"answered (\d+) numbers", 10).split()[-2]) for p in
                (pongs[0], pongs[2])]
    assert answered == [spread["demo.pong.dev.0"], spread["demo.pong.dev.2"]]
