"""The executor's task journal: what `kill_orphans` reads after a slave died, with real
process groups (started here, so that no slave has to be killed for them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import slave.journal
from slave.executor import Executor, TaskResult, kill_orphans, sandbox_path
from slave.procfs import start_ticks as _start_ticks


def records(work_dir: Path) -> list[dict[str, Any]]:
    """The journal's complete, well-formed records."""
    found = []
    for line in (work_dir / "tasks.journal").read_text().split("\n")[:-1]:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def start_record(task_id: str, pgid: int, attempt: int = 0, **extra: Any) -> dict[str, Any]:
    """A start record as the executor writes it for the live group `pgid` (with its proof)."""
    cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
    return {"event": "start", "task_id": task_id, "attempt": attempt, "name": "",
            "sandbox": "", "command": "sleep 30",
            "command_sha256": hashlib.sha256(b"sleep 30").hexdigest(),
            "cmdline_sha256": hashlib.sha256(cmdline).hexdigest(), "pid": pgid, "pgid": pgid,
            "start_ticks": _start_ticks(pgid), "started_at": time.time(), **extra}


def end_record(task_id: str, pgid: int, attempt: int = 0) -> dict[str, Any]:
    return {"event": "end", "task_id": task_id, "attempt": attempt, "pgid": pgid,
            "state": "FINISHED", "exit_code": 0, "finished_at": time.time()}


def write_lines(path: Path, *lines: dict[str, Any] | bytes) -> None:
    with open(path, "ab") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")


def gone(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start `sleep 30` process groups standing in for tasks of a dead slave; killed after."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def sleeper(groups: list[subprocess.Popen[bytes]],
            argv: tuple[str, ...] = ("sleep", "30")) -> subprocess.Popen[bytes]:
    """A process group of its own running `argv`, once it has exec'd."""
    proc = subprocess.Popen(argv, start_new_session=True)
    groups.append(proc)
    deadline = time.monotonic() + 5
    while _start_ticks(proc.pid) is None or argv[-1].encode() not in Path(
            f"/proc/{proc.pid}/cmdline").read_bytes():  # exec'd: its start time is final
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


async def test_start_without_end_is_killed_skipping_torn_and_garbage_lines(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    orphan, ended, other = sleeper(groups), sleeper(groups), sleeper(groups)
    journal = tmp_path / "tasks.journal"
    write_lines(journal, b"\x00\x00 not json\n", start_record("orphan", orphan.pid),
                b"[1, 2]\n", b"{\"event\": \"start\", \"task_id\": \"x\"}\n",
                start_record("ended", ended.pid), end_record("ended", ended.pid),
                b"\xff\xfe\n", start_record("other", other.pid),
                b'{"event": "end", "task_id": "other", "attempt": 0, "pg')  # torn last line
    killed = await kill_orphans(tmp_path, grace=0.5)
    assert sorted(killed) == ["orphan", "other"]
    assert gone(orphan) and gone(other)
    assert ended.poll() is None  # its end was recorded: not an orphan


async def test_reused_pid_and_excluded_groups_are_spared(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    reused, mine = sleeper(groups), sleeper(groups)
    ticks = _start_ticks(reused.pid)
    assert ticks is not None
    write_lines(tmp_path / "tasks.journal",
                start_record("reused", reused.pid, start_ticks=ticks - 1),
                start_record("mine", mine.pid))
    assert await kill_orphans(tmp_path, exclude_pgids=[mine.pid], grace=0.5) == []
    assert reused.poll() is None and mine.poll() is None


async def test_old_task_json_is_still_honoured(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    # As the slave before the journal ran them: `/bin/sh -c COMMAND`, recorded in full.
    command = "sleep 30; true"
    old, finished = (sleeper(groups, ("/bin/sh", "-c", command)) for _ in range(2))
    for task_id, proc, done in (("old", old, False), ("done", finished, True)):
        box = tmp_path / "sandboxes" / task_id / "0"
        box.mkdir(parents=True)
        rec = {"task_id": task_id, "attempt": 0, "pid": proc.pid, "pgid": proc.pid,
               "command": command, "start_ticks": _start_ticks(proc.pid),
               "started_at": time.time()}
        if done:
            rec.update(state="FINISHED", exit_code=0, finished_at=time.time())
        (box / "task.json").write_text(json.dumps(rec))
        (box / "stdout").write_text(f"{task_id} log\n")
    assert await kill_orphans(tmp_path, grace=0.5) == ["old"]
    assert gone(old) and finished.poll() is None
    ex = Executor(tmp_path, lambda r: None)  # their logs stay readable after the upgrade
    assert ex.read_log("old", 0, "stdout") == (b"old log\n", 8, True)


async def test_crashed_executors_task_is_killed_and_startup_compacts(tmp_path: Path) -> None:
    crashed = Executor(tmp_path, lambda r: None)
    run = crashed.launch("left", "echo up; sleep 30")
    stdout = sandbox_path(tmp_path, "left", 0) / "stdout"
    deadline = time.monotonic() + 5
    while not (stdout.exists() and stdout.read_text()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await crashed.launch("short", "true")
    (left,) = crashed.running()
    assert left.pid
    run.cancel()  # the executor "dies": nobody ends its task, whose group keeps running
    await asyncio.sleep(0)
    os.killpg(left.pid, 0)

    results: list[TaskResult] = []
    ex = Executor(tmp_path, results.append, kill_grace=0.5)
    live = ex.launch("live", "echo up; sleep 30")
    while not ex.running()[0].pid:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # its start is journalled after the spawn batch
    inode = (tmp_path / "tasks.journal").stat().st_ino
    assert await ex.kill_orphans() == ["left"]
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.killpg(left.pid, 0)  # SIGKILLed process groups can take a moment to go
            await asyncio.sleep(0.02)
    # Compacted: a new file holding only what still runs here.
    assert (tmp_path / "tasks.journal").stat().st_ino != inode
    assert [(r["task_id"], r["event"]) for r in records(tmp_path)] == [("live", "start")]
    # Later records go to the new file.
    ex.kill("live")
    await live
    assert [(r["task_id"], r["event"]) for r in records(tmp_path)] == [
        ("live", "start"), ("live", "end")]
    await ex.shutdown()
    assert [r.state for r in results] == ["KILLED"]


async def test_compaction_during_operation_keeps_running_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slave.journal, "JOURNAL_COMPACT_AT", 4096)
    ex = Executor(tmp_path, lambda r: None, kill_grace=0.5)
    long = ex.launch("long", "sleep 30")
    for i in range(40):  # ~40 * 500 bytes: several compactions
        await ex.launch(f"t{i}", "true")
    journal = tmp_path / "tasks.journal"
    assert journal.stat().st_size <= 4096 + 600
    kept = records(journal.parent)
    assert kept[0]["task_id"] == "long" and kept[0]["event"] == "start"
    assert not (tmp_path / "tasks.journal.tmp").exists()
    # Were the slave to die now, its running task would still be found.
    (running,) = ex.running()
    assert await kill_orphans(tmp_path, grace=0.5) == ["long"]
    result = await long
    assert (result.state, result.exit_code) == ("FAILED", -15)
    assert running.pid and result.task_id == "long"
    await ex.shutdown()


async def test_a_torn_last_line_does_not_swallow_the_next_record(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    write_lines(tmp_path / "tasks.journal", b'{"event": "start", "task_id": "torn", "att')
    ex = Executor(tmp_path, lambda r: None)
    run = ex.launch("next", "sleep 30")
    while not ex.running()[0].pid:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    lines = (tmp_path / "tasks.journal").read_text().split("\n")
    assert lines[0].endswith('"att') and json.loads(lines[1])["task_id"] == "next"
    assert [r["task_id"] for r in records(tmp_path)] == ["next"]  # a line of its own
    assert await kill_orphans(tmp_path, grace=0.5) == ["next"]
    assert (await run).exit_code == -15
    await ex.shutdown()


async def test_three_inodes_per_task(tmp_path: Path) -> None:
    ex = Executor(tmp_path, lambda r: None)
    await ex.launch("warm", "true")
    before = sum(len(d) + len(f) for _, d, f in os.walk(tmp_path))
    await asyncio.gather(*(ex.launch(f"t{i}", "true") for i in range(20)))
    after = sum(len(d) + len(f) for _, d, f in os.walk(tmp_path))
    assert after - before == 3 * 20  # a directory, stdout, stderr; the journal is shared
    await ex.shutdown()


def test_records_appended_after_an_executors_scan_began_are_not_read(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    from slave.orphans import find_orphans as _find_orphans

    early, late = sleeper(groups), sleeper(groups)
    journal = tmp_path / "tasks.journal"
    write_lines(journal, start_record("early", early.pid))
    known = journal.stat().st_size
    write_lines(journal, start_record("late", late.pid))  # e.g. a launch during the scan
    assert _find_orphans(tmp_path, frozenset(), known) == [("early", early.pid)]
    assert len(_find_orphans(tmp_path, frozenset())) == 2
