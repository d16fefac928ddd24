"""Each example runs as its own OS process, exits by itself, and prints what it promises."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


def run_example(name: str, *args: str, timeout: float = 30) -> str:
    out = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    stdout = out.stdout.decode()
    assert out.returncode == 0, f"exit {out.returncode}\n{stdout}\n{out.stderr.decode()}"
    return stdout


def test_vars_stop_serves_vars_and_stops_on_the_stop_message() -> None:
    out = run_example("vars_stop")
    assert "GET /vars-stop/vars -> 200 text/plain: ... vars here ..." in out
    assert re.search(
        r"vars-stop: got 'stop' from example-client@127\.0\.0\.1:\d+; terminating", out
    )
    assert "POST /vars-stop/stop (a libprocess message) -> 202" in out
    assert "wait(vars-stop) -> True" in out
    assert "func1's future: 42" in out
    assert "wait(example) -> True" in out
    assert out.index("vars-stop: finalize") < out.index("wait(vars-stop) -> True")


def test_queue_hands_items_to_waiting_and_later_consumers() -> None:
    out = run_example("queue").splitlines()
    assert out == [
        "dequeued 42",
        "dequeue() on an empty queue: PENDING",
        "after enqueue(7): READY with 7",
        "five dequeues: [0, 1, 2, 3, 4]",
        "after close: waiting consumer's future is DISCARDED",
    ]


def test_future_chain_runs_then_then_and_stops_the_process() -> None:
    out = run_example("future_chain").splitlines()
    assert out == [
        "then #1: func1 gave 42",
        "then #2: i == 42 is True",
        "chain: 'stop' received; terminating",
        "chain result: True",
        "wait(chain) -> True",
        "ready_future().then(second).then(third) -> 'good'",
        "failed chain: FAILED (no such task)",
        "repaired: -1",
    ]


def test_master_slave_exchange_protobuf_messages_until_all_tasks_finish() -> None:
    out = run_example("master_slave")
    assert re.search(
        r"master: slave\(\d+\)@127\.0\.0\.1:\d+ said hello; "
        r"LaunchTasksMessage id=1 with 3 tasks",
        out,
    )
    assert "slave: launch 1 from master: task-1, task-2, task-3" in out
    assert re.search(r"master: progress from slave\(\d+\): task-1 25%, task-2 50%, task-3 75%", out)
    assert re.search(
        r"master: progress from slave\(\d+\): task-1 100%, task-2 100%, "
        r"task-3 100%",
        out,
    )
    assert "slave: shutdown from master" in out
    assert re.search(r"master: slave slave\(\d+\) exited", out)
    assert out.rstrip().endswith("master: slave OS process exited with 0")


def test_pingpong_ping_receives_every_pong() -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "examples.pingpong", "serve", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert serve.stdout is not None
        ready, _, _ = select.select([serve.stdout], [], [], 20)
        line = serve.stdout.readline().decode() if ready else ""
        match = re.match(r"pong listening at (pong@127\.0\.0\.1:\d+)", line)
        assert match, line
        out = run_example("pingpong", "ping", "--to", match.group(1), "--count", "3000")
        assert re.match(r"received 3000 pongs of 3000 in [\d.]+s: [\d,]+ messages/s", out), out
        serve.send_signal(signal.SIGTERM)
        rest, _ = serve.communicate(timeout=10)
        assert "pong answered 3000 pings" in rest.decode()
        assert serve.returncode == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


def test_pingpong_ping_reports_a_bad_upid_clearly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "examples.pingpong", "ping", "--to", "nonsense"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "invalid UPID 'nonsense'" in out.stderr.decode()
    assert "Traceback" not in out.stderr.decode()
