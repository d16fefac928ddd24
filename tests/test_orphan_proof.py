"""Orphan clean-up acts only on proof: a restarted slave kills a process group only when the
journal's record matches the live leader's start time and command (issue 12, point 6).

The proof itself is a pure function (`orphan_unproven`), tested on facts made up here; the
rest runs real process groups, real journals and a real executor killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from procs import alive
from slave.orphans import GONE, MAX_UNPROVEN_WARNINGS, LiveLeader, kill_orphans, orphan_unproven
from slave.procfs import start_ticks as _start_ticks
from test_slave_journal import groups, sleeper  # noqa: F401 - the fixture and its helper
from waiting import until

REPO = Path(__file__).resolve().parents[1]
SH_FORM = b"/bin/sh\0-c\0sleep 30; true\0"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genuine(pgid: int = 4242, ticks: int = 777, command: str = "sleep 30; true",
            **changes: Any) -> dict[str, Any]:
    record = {"event": "start", "task_id": "t", "attempt": 0, "command": command,
              "command_sha256": sha(command.encode()), "cmdline_sha256": sha(SH_FORM),
              "pid": pgid, "pgid": pgid, "start_ticks": ticks}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


LEADER = LiveLeader(start_ticks=777, pgrp=4242, cmdline=SH_FORM)


# -- the proof, pure --------------------------------------------------------------------------


def test_a_matching_start_time_and_cmdline_prove_the_group() -> None:
    assert orphan_unproven(genuine(), 4242, LEADER) is None


def test_shell_form_of_the_recorded_command_proves_without_a_cmdline_digest() -> None:
    # As a slave before the digests wrote it (legacy task.json: the full command).
    legacy = genuine(command_sha256=None, cmdline_sha256=None)
    assert "command_sha256" not in legacy and orphan_unproven(legacy, 4242, LEADER) is None


def test_a_shell_that_execd_its_command_is_proved_by_the_recorded_cmdline_digest() -> None:
    execd = LiveLeader(777, 4242, b"sleep\x0030\x00")
    record = genuine(command="exec sleep 30", cmdline_sha256=sha(b"sleep\x0030\x00"))
    assert orphan_unproven(record, 4242, execd) is None


@pytest.mark.parametrize(("changes", "leader", "reason"), [
    ({"start_ticks": None}, LEADER, "no start time"),
    ({"start_ticks": "777"}, LEADER, "no start time"),
    ({"start_ticks": True}, LEADER, "no start time"),
    ({"start_ticks": 776}, LEADER, "pid was reused"),
    ({}, LiveLeader(777, 4242, b"sleep\x0031\x00"), "another command"),
    ({"cmdline_sha256": None, "command": "sleep 31"}, LEADER, "another command"),
    # The command's text says one thing, its digest another: a forged or truncated record.
    ({"cmdline_sha256": None, "command_sha256": sha(b"rm -rf /")}, LEADER, "another command"),
    ({"cmdline_sha256": None, "command": None, "command_sha256": None}, LEADER, "no command"),
    ({}, LiveLeader(777, 1, SH_FORM), "does not lead"),
    ({"pid": 4243}, LEADER, "does not lead"),
    ({}, None, GONE),
])
def test_a_record_without_proof_is_refused_with_its_reason(
    changes: dict[str, Any], leader: LiveLeader | None, reason: str
) -> None:
    record = genuine()
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    found = orphan_unproven(record, 4242, leader)
    assert found is not None and reason in found


# -- real processes ---------------------------------------------------------------------------


def forged(task_id: str, pid: int, **fields: Any) -> bytes:
    record = {"event": "start", "task_id": task_id, "attempt": 0, "name": "", "sandbox": "",
              "pid": pid, "pgid": pid, "started_at": time.time(), **fields}
    return json.dumps(record).encode() + b"\n"


def live_cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_forged_journal_lines_leave_unrelated_processes_alive_and_say_so(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    no_ticks, bad_ticks, bad_command, digest_only = (sleeper(groups) for _ in range(4))
    ours = sleeper(groups, ("/bin/sh", "-c", "sleep 30; true"))  # proves itself: killed
    ticks = {p.pid: _start_ticks(p.pid) for p in groups}
    (tmp_path / "tasks.journal").write_bytes(b"".join([
        # As issue 12 found it: a start record naming another group, without a start time.
        forged("no-ticks", no_ticks.pid, command="sleep 30"),
        forged("bad-ticks", bad_ticks.pid, command="sleep 30",
               cmdline_sha256=sha(live_cmdline(bad_ticks.pid)),
               start_ticks=(ticks[bad_ticks.pid] or 0) - 5),
        forged("bad-command", bad_command.pid, command="sleep 31",
               command_sha256=sha(b"sleep 31"), start_ticks=ticks[bad_command.pid]),
        # The right start time and the live cmdline's digest, but a pgid written as a float.
        forged("float-pgid", digest_only.pid, start_ticks=ticks[digest_only.pid],
               cmdline_sha256=sha(live_cmdline(digest_only.pid))).replace(
                   f'"pgid": {digest_only.pid}'.encode(), f'"pgid": {digest_only.pid}.0'.encode()),
        forged("ours", ours.pid, command="sleep 30; true", start_ticks=ticks[ours.pid]),
    ]))
    with caplog.at_level(logging.WARNING, logger="slave.executor"):
        killed = await kill_orphans(tmp_path, grace=0.5)
    assert killed == ["ours"]
    assert ours.wait(5) == -signal.SIGTERM
    for proc in (no_ticks, bad_ticks, bad_command, digest_only):
        assert proc.poll() is None, f"process {proc.pid} was killed without proof"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for task_id, proc, reason in (("no-ticks", no_ticks, "no start time"),
                                  ("bad-ticks", bad_ticks, "pid was reused"),
                                  ("bad-command", bad_command, "another command")):
        (line,) = [w for w in warnings if f"task '{task_id}'" in w]
        assert f"process group {proc.pid} alone" in line and reason in line
    assert not any("float-pgid" in w for w in warnings)  # not a record this slave writes
    assert len(warnings) == 3


async def test_many_unproven_records_give_a_bounded_number_of_lines(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    procs = [sleeper(groups) for _ in range(MAX_UNPROVEN_WARNINGS + 5)]
    (tmp_path / "tasks.journal").write_bytes(b"".join(
        forged(f"f{i}", p.pid, command="sleep 30") for i, p in enumerate(procs)) * 20)
    with caplog.at_level(logging.WARNING, logger="slave.executor"):
        assert await kill_orphans(tmp_path, grace=0.5) == []
    assert all(p.poll() is None for p in procs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == MAX_UNPROVEN_WARNINGS + 1
    assert "left 5 more unproven process groups alone" in warnings[-1]


CRASHING_SLAVE = """
import asyncio, sys
from slave.executor import Executor, sandbox_path

async def main() -> None:
    ex = Executor(sys.argv[1], lambda r: None)
    for task_id, command in (("simple", "sleep 30"), ("compound", "sleep 30 & echo $!; wait")):
        ex.launch(task_id, command)
    boxes = [sandbox_path(ex.work_dir, t, 0) / "stdout" for t in ("compound",)]
    journal = ex.work_dir / "tasks.journal"
    while not (journal.exists() and journal.read_text().count("\\n") == 2
               and all(b.exists() and b.read_text() for b in boxes)):
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.sleep(60)  # killed with SIGKILL here, its tasks still running

asyncio.run(main())
"""



async def test_genuine_orphans_of_an_executor_killed_with_sigkill_are_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashing = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_SLAVE, str(tmp_path), cwd=REPO,
        stdout=asyncio.subprocess.PIPE)
    assert crashing.stdout is not None
    try:
        assert await asyncio.wait_for(crashing.stdout.readline(), 20) == b"ready\n"
    finally:
        crashing.kill()
        await crashing.wait()
    starts = {r["task_id"]: r for r in map(json.loads, (tmp_path / "tasks.journal")
                                           .read_text().splitlines())}
    assert set(starts) == {"simple", "compound"}
    for record in starts.values():  # the proof that was journalled
        assert type(record["start_ticks"]) is int and record["cmdline_sha256"]
        assert record["command_sha256"] == sha(record["command"].encode())
    child = int((tmp_path / "sandboxes" / "compound@0" / "stdout").read_text())
    leaders = [r["pgid"] for r in starts.values()]
    assert all(alive(pid) for pid in [*leaders, child])  # they outlived their slave

    with caplog.at_level(logging.WARNING, logger="slave.executor"):
        killed = await kill_orphans(tmp_path, grace=1.0)
    assert sorted(killed) == ["compound", "simple"]
    await until(lambda: not any(alive(pid) for pid in [*leaders, child]), timeout=10)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
