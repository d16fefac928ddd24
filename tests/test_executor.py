"""The slave's task executor, with real shells, real process groups and real files."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from slave.executor import Executor, TaskResult, kill_orphans, sandbox_path
from waiting import until

REPO = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """Is the process there and not a zombie? (Orphans here may never be reaped by init.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def first_line(path: Path) -> str | None:
    """The first complete line of a file, or None while there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text.split("\n", 1)[0] if "\n" in text else None


def journal(work_dir: Path) -> list[dict[str, Any]]:
    """The records in the executor's journal (complete lines only)."""
    try:
        lines = (work_dir / "tasks.journal").read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line]


def record(work_dir: Path, task_id: str, event: str = "start") -> dict[str, Any] | None:
    """The last `event` record of a task in the journal, if any."""
    found = [r for r in journal(work_dir) if r["task_id"] == task_id and r["event"] == event]
    return found[-1] if found else None


@pytest.fixture
def results() -> list[TaskResult]:
    return []


@pytest.fixture
async def ex(tmp_path: Path, results: list[TaskResult]) -> AsyncIterator[Executor]:
    executor = Executor(tmp_path / "work", results.append, kill_grace=0.2)
    yield executor
    await executor.shutdown()


async def test_exit_zero_is_finished_with_stdout_captured(
    ex: Executor, results: list[TaskResult]
) -> None:
    result = await ex.launch("t1", "echo hello; echo PROGRESS 30", name="greet")
    assert result == TaskResult("t1", 0, "FINISHED", 0, "exited with code 0", 1.0)
    assert results == [result]  # on_exit called exactly once, with the same result
    box = sandbox_path(ex.work_dir, "t1", 0)
    assert (box / "stdout").read_bytes() == b"hello\nPROGRESS 30\n"
    start, end = record(ex.work_dir, "t1"), record(ex.work_dir, "t1", "end")
    assert start and end and journal(ex.work_dir) == [start, end]
    assert start["command"] == "echo hello; echo PROGRESS 30" and start["sandbox"] == str(box)
    assert start["pgid"] == start["pid"] > 1 and start["attempt"] == 0
    assert (end["pgid"], end["state"], end["exit_code"]) == (start["pgid"], "FINISHED", 0)
    assert sorted(p.name for p in box.iterdir()) == ["stderr", "stdout"]
    assert ex.counters()["tasks_finished"] == 1 and ex.counters()["tasks_running"] == 0


async def test_nonzero_exit_is_failed_with_exit_code(ex: Executor) -> None:
    result = await ex.launch("t1", "echo PROGRESS 40; exit 3", attempt=2)
    assert (result.state, result.exit_code, result.attempt) == ("FAILED", 3, 2)
    assert result.message == "exited with code 3"
    assert result.progress == pytest.approx(0.4)  # the last progress printed, not 1.0
    assert ex.counters()["tasks_failed"] == 1


async def test_final_progress_line_without_newline_counts(ex: Executor) -> None:
    result = await ex.launch("t1", "echo PROGRESS 10; printf 'PROGRESS 70'; exit 2")
    assert result.state == "FAILED" and result.progress == pytest.approx(0.7)


async def test_stderr_captured_separately(ex: Executor) -> None:
    await ex.launch("t1", "echo out; echo err >&2")
    box = sandbox_path(ex.work_dir, "t1", 0)
    assert (box / "stdout").read_bytes() == b"out\n"
    assert (box / "stderr").read_bytes() == b"err\n"


async def test_progress_reported_mid_run(ex: Executor) -> None:
    run = ex.launch("t1", "echo PROGRESS 50; sleep 10")
    seen: dict[str, float] = {}
    await until(lambda: seen.update(ex.poll_progress()) or seen)
    assert seen == {"t1": 0.5}
    assert not run.done() and ex.progress() == {"t1": 0.5}
    assert ex.poll_progress() == {}  # unchanged since the last poll
    assert ex.kill("t1")
    result = await run
    assert (result.state, result.progress) == ("KILLED", 0.5)


async def test_progress_found_after_burst_larger_than_tail_window(ex: Executor) -> None:
    # PROGRESS lines written in a burst larger than MAX_TAIL: the poll sees the latest one.
    cmd = "i=0; while [ $i -lt 3000 ]; do echo 'PROGRESS 10 padding padding padding'; " \
        "i=$((i+1)); done; echo PROGRESS 80; sleep 10"  # fmt: skip
    run = ex.launch("t1", cmd)
    seen: dict[str, float] = {}
    await until(lambda: seen.update(ex.poll_progress()) or seen.get("t1") == 0.8)
    assert ex.kill("t1") and (await run).progress == pytest.approx(0.8)


async def test_kill_terminates_process_group(tmp_path: Path) -> None:
    ex = Executor(tmp_path / "work", lambda r: None, kill_grace=5)
    run = ex.launch("t1", "sleep 30 & echo $!; wait")
    stdout = sandbox_path(ex.work_dir, "t1", 0) / "stdout"
    await until(lambda: first_line(stdout))
    child = int(first_line(stdout) or 0)
    (task,) = ex.running()
    assert task.pid and alive(task.pid) and alive(child)
    started = time.monotonic()
    assert ex.kill("t1") is True
    result = await run
    assert result.state == "KILLED" and result.message.startswith("kill requested")
    assert not alive(task.pid) and not alive(child)
    assert time.monotonic() - started < 2.5  # SIGTERM was enough: no wait for the grace
    assert ex.counters()["tasks_killed"] == 1


async def test_kill_escalates_to_sigkill_when_sigterm_ignored(ex: Executor) -> None:
    run = ex.launch("t1", "trap '' TERM; echo ready; sleep 30")
    stdout = sandbox_path(ex.work_dir, "t1", 0) / "stdout"
    await until(lambda: first_line(stdout) == "ready")
    started = time.monotonic()
    assert ex.kill("t1")
    result = await run
    assert time.monotonic() - started >= 0.2  # the grace period was honoured
    assert (result.state, result.exit_code) == ("KILLED", -9)
    assert "signal 9" in result.message


async def test_children_left_behind_are_killed_when_shell_exits(ex: Executor) -> None:
    result = await ex.launch("t1", "sleep 30 & echo $!")
    child = int((sandbox_path(ex.work_dir, "t1", 0) / "stdout").read_text())
    assert result.state == "FINISHED"
    await until(lambda: not alive(child), timeout=2)


async def test_timeout_fails_task_with_message(ex: Executor) -> None:
    started = time.monotonic()
    result = await ex.launch("t1", "echo PROGRESS 20; sleep 30", timeout=0.3)
    assert time.monotonic() - started < 2
    assert (result.state, result.message) == ("FAILED", "timed out after 0.3 s")
    assert result.exit_code == -15 and result.progress == pytest.approx(0.2)


async def test_env_has_task_id_and_sandbox(tmp_path: Path) -> None:
    results: list[TaskResult] = []
    ex = Executor(
        tmp_path / "work", results.append,
        base_env={"PATH": os.environ["PATH"], "KEEP": "k", "LIBPROCESS_PORT": "5051"},
    )  # fmt: skip
    cmd = 'echo "$TASK_ID|$TASK_NAME|$TASK_ATTEMPT|$SANDBOX|$(pwd)|$KEEP|$EXTRA|$LIBPROCESS_PORT"'
    result = await ex.launch("job 1", cmd, name="nm", attempt=4, env={"EXTRA": "x"})
    box = sandbox_path(ex.work_dir, "job 1", 4)
    assert result.state == "FINISHED"
    assert box.name == "job%201@4" and box.parent == ex.work_dir / "sandboxes"
    out = (box / "stdout").read_text().strip()
    assert out == f"job 1|nm|4|{box}|{box}|k|x|"


async def test_read_log_from_offset(ex: Executor) -> None:
    await ex.launch("done", "printf abcdefghij")
    assert ex.read_log("done", 0, "stdout", offset=3, limit=4) == (b"defg", 7, False)
    assert ex.read_log("done", 0, "stdout", offset=7, limit=100) == (b"hij", 10, True)
    assert ex.read_log("done", 0, "stdout", offset=10, limit=100) == (b"", 10, True)
    assert ex.read_log("done", 0, "stderr", offset=0, limit=100) == (b"", 0, True)
    run = ex.launch("live", "printf xyz; sleep 10")
    assert ex.read_log("live", 0, "stdout", 0, 100) == (b"", 0, False)  # not set up yet
    await until(lambda: ex.read_log("live", 0, "stdout", 0, 100)[0] == b"xyz")
    assert ex.read_log("live", 0, "stdout", 0, 100) == (b"xyz", 3, False)  # may grow still
    ex.kill("live")
    await run
    with pytest.raises(FileNotFoundError, match="no stdout for task 'nope'"):
        ex.read_log("nope", 0, "stdout", 0, 10)
    with pytest.raises(ValueError):
        ex.read_log("done", 0, "task.json", 0, 10)  # type: ignore[arg-type]


async def test_path_traversal_task_id_rejected(ex: Executor, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    for bad in ["../../../secret", "..", ".", "", "a/b", "a\\b", "a\0b"]:
        with pytest.raises(ValueError, match="cannot name a sandbox"):
            ex.read_log(bad, 0, "stdout", 0, 10)
    result = await ex.launch("../../escape", "echo hi > marker")
    assert result.state == "FAILED" and result.message.startswith("could not start:")
    assert result.exit_code is None
    assert list(tmp_path.rglob("marker")) == []
    # Odd but harmless ids are escaped, staying inside the sandboxes directory.
    assert sandbox_path(ex.work_dir, "..x", 0).name == "%2E.x@0"
    assert sandbox_path(ex.work_dir, "a@1", 2).name == "a%401@2"  # '@' only before the attempt


async def test_could_not_start_is_reported_as_failed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    results: list[TaskResult] = []
    ex = Executor(tmp_path / "file", results.append)
    result = await ex.launch("t1", "true")
    assert results == [result]
    assert (result.state, result.exit_code) == ("FAILED", None)
    assert result.message.startswith("could not start:") and "file" in result.message
    bad_timeout = await ex.launch("t2", "true", timeout=0)
    assert "timeout" in bad_timeout.message and bad_timeout.state == "FAILED"
    assert ex.counters()["tasks_failed"] == 2 and ex.counters()["tasks_launched"] == 2


async def test_kill_of_unknown_or_finished_task_is_noop(ex: Executor) -> None:
    assert ex.kill("nobody") is False
    await ex.launch("t1", "true")
    assert ex.kill("t1") is False


async def test_relaunch_while_running_is_refused(ex: Executor) -> None:
    run = ex.launch("t1", "sleep 10")
    with pytest.raises(ValueError, match="already running"):
        ex.launch("t1", "true", attempt=1)
    ex.kill("t1")
    await run
    assert (await ex.launch("t1", "true", attempt=1)).state == "FINISHED"


ORPHAN_MAKER = """
import asyncio, os, sys
from pathlib import Path
from slave.executor import Executor, sandbox_path

async def main() -> None:
    ex = Executor(sys.argv[1], lambda r: None)
    ex.launch("orphan", "sleep 30 & echo $!; wait")
    box = sandbox_path(ex.work_dir, "orphan", 0)
    journal = ex.work_dir / "tasks.journal"
    while not (journal.exists() and journal.read_text() and (box / "stdout").read_text()):
        await asyncio.sleep(0.01)
    os._exit(0)  # the slave dies; its task does not

asyncio.run(main())
"""


async def test_kill_orphans_kills_leftover_process_group(ex: Executor) -> None:
    maker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_MAKER, str(ex.work_dir), cwd=REPO
    )
    assert await asyncio.wait_for(maker.wait(), 10) == 0
    box = sandbox_path(ex.work_dir, "orphan", 0)
    leader = (record(ex.work_dir, "orphan") or {})["pid"]
    child = int((box / "stdout").read_text())
    assert alive(leader) and alive(child)
    mine = ex.launch("mine", "echo up; sleep 30")
    await until(lambda: first_line(sandbox_path(ex.work_dir, "mine", 0) / "stdout"))

    assert await ex.kill_orphans() == ["orphan"]
    assert not alive(leader) and not alive(child)
    assert not mine.done() and alive(ex.running()[0].pid or 0)  # its own task is spared
    assert await kill_orphans(ex.work_dir, exclude_pgids=[ex.running()[0].pid or 0]) == []


async def test_shutdown_kills_all_running(ex: Executor, results: list[TaskResult]) -> None:
    runs = [ex.launch(f"t{i}", f"echo {i}; sleep 30") for i in range(3)]
    await until(lambda: all(t.pid for t in ex.running()) and len(ex.running()) == 3)
    pids = [t.pid or 0 for t in ex.running()]
    await ex.shutdown()
    assert all(run.done() for run in runs)
    assert sorted(r.task_id for r in results) == ["t0", "t1", "t2"]
    assert {r.state for r in results} == {"KILLED"}
    assert not any(alive(pid) for pid in pids)
    assert ex.running() == [] and ex.counters()["tasks_killed"] == 3
    with pytest.raises(RuntimeError, match="shut down"):
        ex.launch("late", "true")


async def test_injected_sleep_drives_timeout(tmp_path: Path) -> None:
    fired = asyncio.Event()
    delays: list[float] = []

    async def manual_sleep(seconds: float) -> None:
        delays.append(seconds)
        await fired.wait()

    ex = Executor(tmp_path / "work", lambda r: None, sleep=manual_sleep, kill_grace=7)
    run = ex.launch("t1", "sleep 30", timeout=1000)
    await until(lambda: delays == [1000])
    fired.set()  # "1000 s" pass at once
    result = await run
    assert result.message == "timed out after 1000 s"
    await ex.shutdown()


# -- child watching, spawn batching, task.json (the per-task path without threads) ----------


async def test_pidfd_watcher_reaps_with_exit_codes_and_signals() -> None:
    import subprocess

    from slave.spawn import ChildWatcher as _ChildWatcher

    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here")
    watcher = _ChildWatcher(asyncio.get_running_loop())
    exits = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
    sleeps = subprocess.Popen(["sleep", "30"])
    codes = [watcher.watch(exits), watcher.watch(sleeps)]
    assert len(watcher._children) == 2  # both on pidfds, not in threads
    assert await asyncio.wait_for(codes[0], 5) == 7
    sleeps.kill()
    assert await asyncio.wait_for(codes[1], 5) == -9
    assert exits.returncode == 7 and sleeps.returncode == -9  # reaped: no zombies left
    with pytest.raises(ChildProcessError):
        os.waitpid(sleeps.pid, os.WNOHANG)
    assert watcher._children == {}
    watcher.close_if_idle()
    assert watcher._epoll is None


async def test_cancelled_wait_still_reaps_the_child() -> None:
    import subprocess

    from slave.spawn import ChildWatcher as _ChildWatcher

    watcher = _ChildWatcher(asyncio.get_running_loop())
    proc = subprocess.Popen(["sleep", "0.1"])
    watcher.watch(proc).cancel()
    await until(lambda: proc.returncode is not None)
    assert proc.returncode == 0 and watcher._children == {}


@pytest.fixture
def no_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a kernel without pidfd_open: the executor must fall back to waiting threads."""
    import errno

    def enosys(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", enosys, raising=False)
    monkeypatch.setattr("slave.spawn._use_pidfd", True)


async def test_without_pidfds_exit_codes_kills_and_timeouts_still_work(
    no_pidfds: None, ex: Executor
) -> None:
    import slave.spawn

    assert (await ex.launch("t1", "exit 3")).exit_code == 3
    assert slave.spawn._use_pidfd is False  # found out once, then threads straight away
    run = ex.launch("t2", "sleep 30 & echo $!; wait")
    stdout = sandbox_path(ex.work_dir, "t2", 0) / "stdout"
    await until(lambda: first_line(stdout))
    child = int(first_line(stdout) or 0)
    assert ex.kill("t2")
    result = await run
    assert result.state == "KILLED" and not alive(child)
    timed_out = await ex.launch("t3", "sleep 30", timeout=0.2)
    assert (timed_out.state, timed_out.exit_code) == ("FAILED", -15)


async def test_pidfd_failure_for_one_child_falls_back_for_that_child_only(
    monkeypatch: pytest.MonkeyPatch, ex: Executor
) -> None:
    import errno

    import slave.spawn

    real = os.pidfd_open
    calls: list[int] = []

    def emfile_once(pid: int, flags: int = 0) -> int:
        calls.append(pid)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", emfile_once)
    monkeypatch.setattr("slave.spawn._use_pidfd", True)
    first, second = await asyncio.gather(ex.launch("t1", "exit 4"), ex.launch("t2", "exit 5"))
    assert (first.exit_code, second.exit_code) == (4, 5)
    assert len(calls) == 2 and slave.spawn._use_pidfd is True


async def test_burst_is_spawned_in_fifo_batches_between_loop_turns(
    ex: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slave.executor import MAX_CONCURRENT_SPAWNS

    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:  # counts loop turns while the burst is spawned
        nonlocal turn
        turn += 1
        if running:
            loop.call_soon(tick)

    running = True
    loop.call_soon(tick)
    spawned: list[tuple[int, str]] = []
    real_spawn = ex._spawn

    def spawn(t: Any, command: str, env: Any) -> bool:
        spawned.append((turn, t.task_id))
        return real_spawn(t, command, env)

    monkeypatch.setattr(ex, "_spawn", spawn)
    n = 3 * MAX_CONCURRENT_SPAWNS + 5
    runs = [ex.launch(f"t{i:03d}", "true") for i in range(n)]
    assert ex.kill(f"t{n - 1:03d}")  # killed while it waits for its turn
    results = await asyncio.gather(*runs)
    running = False
    assert [tid for _, tid in spawned] == [f"t{i:03d}" for i in range(n)]  # FIFO
    per_turn: dict[int, int] = {}
    for at, _ in spawned:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert max(per_turn.values()) <= MAX_CONCURRENT_SPAWNS and len(per_turn) >= 4
    assert {r.state for r in results[:-1]} == {"FINISHED"}
    last = results[-1]
    assert (last.state, last.exit_code, last.message) == ("KILLED", None,
                                                          "killed before it started")
    assert not sandbox_path(ex.work_dir, f"t{n - 1:03d}", 0).exists()


async def test_journal_gets_start_then_end_appended_to_one_file(ex: Executor) -> None:
    run = ex.launch("t1", "echo up; sleep 30")
    box = sandbox_path(ex.work_dir, "t1", 0)
    await until(lambda: first_line(box / "stdout"))
    start = record(ex.work_dir, "t1")
    assert start and start["pgid"] == ex.running()[0].pid and "state" not in start
    inode = (ex.work_dir / "tasks.journal").stat().st_ino
    ex.kill("t1")
    await run
    await ex.launch("t2", "true", attempt=3)
    assert [(r["task_id"], r["event"]) for r in journal(ex.work_dir)] == [
        ("t1", "start"), ("t1", "end"), ("t2", "start"), ("t2", "end")]
    end = record(ex.work_dir, "t1", "end")
    assert end and end["state"] == "KILLED" and end["exit_code"] == -15
    assert (end["attempt"], end["pgid"]) == (0, start["pgid"])
    assert (ex.work_dir / "tasks.journal").stat().st_ino == inode  # appended, not replaced
    assert sorted(p.name for p in box.iterdir()) == ["stderr", "stdout"]  # no inode per record
    assert sorted(p.name for p in (ex.work_dir / "sandboxes").iterdir()) == ["t1@0", "t2@3"]


async def test_env_follows_changes_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = Executor(tmp_path / "work", lambda r: None)
    monkeypatch.setenv("SLAVE_TEST_VAR", "one")
    monkeypatch.setenv("LIBPROCESS_IP", "10.0.0.1")
    await ex.launch("t1", 'echo "$SLAVE_TEST_VAR|$LIBPROCESS_IP"')
    monkeypatch.setenv("SLAVE_TEST_VAR", "two")
    await ex.launch("t2", 'echo "$SLAVE_TEST_VAR|$LIBPROCESS_IP"')
    out = [(sandbox_path(ex.work_dir, t, 0) / "stdout").read_text() for t in ("t1", "t2")]
    assert out == ["one|\n", "two|\n"]
