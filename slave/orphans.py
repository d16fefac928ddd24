"""Orphan clean-up after a slave crash: kill what an earlier slave's tasks left running, but
only on proof that the slave started it.

With cgroups isolation the task cgroups are the proof (`Isolator.recover`); this module is
for process groups named by the journal (a slave without cgroups, or one before them). A
group is signalled only when its live leader has the start time (/proc/<pid>/stat field 22,
boot-relative) and the command that the journal recorded. Anything else the journal names
-- a record without a start time, a reused pid, another command, a leader that exited while
its group lives on -- is reported in one WARN line and left alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slave import procfs
from slave.journal import JOURNAL, legacy_records, sha256, unended_starts

__all__ = ["GONE", "MAX_UNPROVEN_WARNINGS", "SHELL", "LiveLeader", "find_orphans",
           "kill_orphans", "orphan_unproven"]

log = logging.getLogger("slave.executor")

Sleep = Callable[[float], Awaitable[Any]]

SHELL = "/bin/sh"
"""Every task runs as `SHELL -c COMMAND`: the leader's cmdline proves a journal record."""
MAX_UNPROVEN_WARNINGS = 20
"""Most journal records named one WARN line each when `kill_orphans` cannot prove them ours; the
rest are counted in one more line (a corrupt journal must not flood the log)."""
GONE = "its leader is gone"
"""`orphan_unproven`'s reason when the recorded leader no longer exists (or is a zombie)."""


async def kill_orphans(
    work_dir: str | os.PathLike[str],
    *,
    exclude_pgids: Collection[int] = (),
    grace: float = 3.0,
    sleep: Sleep = asyncio.sleep,
    journal_bytes: int | None = None,
) -> list[str]:
    """Kill process groups left running in `work_dir`'s sandboxes by an earlier slave.

    Call when a slave restarts on the same work dir, before launching. Uses the journal
    (its first `journal_bytes`, or all; starts without an end; torn or garbled lines are
    skipped) and any sandbox's task.json left by slaves before the journal. Acts only on
    proof (`orphan_unproven`): a group is signalled only when its live leader has the
    recorded start time and command; any other record that names a live group is reported
    in one WARN line and left alone. SIGTERM, then SIGKILL after `grace`. Returns the task
    ids whose groups were signalled. Does not rewrite the journal (an executor may hold it
    open): `Executor.kill_orphans` does.
    """
    found = await asyncio.to_thread(find_orphans, Path(work_dir), frozenset(exclude_pgids),
                                    journal_bytes)
    hit = [(tid, pgid) for tid, pgid in found if procfs.signal_group(pgid, signal.SIGTERM)]
    alive = [pgid for _, pgid in hit]
    for _ in range(10):  # poll, so that groups that exit promptly do not cost the whole grace
        if not alive:
            break
        await sleep(grace / 10)
        alive = await asyncio.to_thread(_alive_groups, alive)
    for pgid in alive:
        procfs.signal_group(pgid, signal.SIGKILL)
    return list(dict.fromkeys(tid for tid, _ in hit))


def _alive_groups(pgids: list[int]) -> list[int]:
    return [pgid for pgid in pgids if procfs.group_alive(pgid)]


def find_orphans(work_dir: Path, exclude: frozenset[int],
                 journal_bytes: int | None = None) -> list[tuple[str, int]]:
    """(task id, pgid) of each unended record whose live group leader proves it ours.

    Records without that proof are named in one WARN line each (at most
    MAX_UNPROVEN_WARNINGS, then a count) and left alone; records whose group is gone are
    dropped quietly (the task ended while no slave watched).
    """
    candidates: dict[int, dict[str, Any]] = {}  # pgid -> its first unended start record
    for record in unended_starts(work_dir / JOURNAL, journal_bytes):
        candidates.setdefault(record["pgid"], record)
    for record_path in legacy_records(work_dir / "sandboxes"):
        try:
            record = json.loads(record_path.read_text())
            pgid = record["pgid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if type(pgid) is int and "finished_at" not in record:
            candidates.setdefault(pgid, record)
    found, unproven = [], []
    for pgid, record in candidates.items():
        if pgid <= 1 or pgid in exclude:
            continue
        reason = orphan_unproven(record, pgid, _live_leader(pgid))
        if reason is None:
            found.append((str(record["task_id"]), pgid))
        elif reason != GONE and procfs.group_alive(pgid):
            unproven.append((record, pgid, reason))
    for record, pgid, reason in unproven[:MAX_UNPROVEN_WARNINGS]:
        log.warning("orphan clean-up: left process group %d alone (journal names task %r): "
                    "%s, so nothing proves this slave started it", pgid,
                    str(record.get("task_id"))[:100], reason)
    if len(unproven) > MAX_UNPROVEN_WARNINGS:
        log.warning("orphan clean-up: left %d more unproven process groups alone",
                    len(unproven) - MAX_UNPROVEN_WARNINGS)
    return found


@dataclass(frozen=True)
class LiveLeader:
    """What /proc says of a live process that a journal record names as a group leader."""

    start_ticks: int  # /proc/<pid>/stat field 22: clock ticks after boot
    pgrp: int  # its process group
    cmdline: bytes  # /proc/<pid>/cmdline, NUL-separated arguments


def orphan_unproven(record: Mapping[str, Any], pgid: int, live: LiveLeader | None) -> str | None:
    """None when `record` proves that this slave started the live group `pgid`, else why not.

    Pure. Proof needs all of: the record names `pgid` as pid and pgid; the live leader still
    leads that group; its start time (boot-relative ticks) equals the recorded one; and its
    cmdline is `SHELL -c <command>` for the recorded command (checked against the command's
    digest when there is one) or has the digest recorded at the start (a shell that exec'd
    its command before the record was taken). A leaderless group proves nothing.
    """
    if live is None:
        return GONE
    ticks = record.get("start_ticks")
    if type(ticks) is not int:
        return "the record has no start time"
    if record.get("pid", pgid) != pgid or live.pgrp != pgid:
        return f"process {pgid} does not lead process group {pgid} as recorded"
    if live.start_ticks != ticks:
        return (f"process {pgid} started at tick {live.start_ticks}, the record says {ticks} "
                "(the pid was reused)")
    if sha256(live.cmdline) == record.get("cmdline_sha256"):
        return None
    command = record.get("command")
    if isinstance(command, str):
        try:
            argv = os.fsencode(command)
        except UnicodeError:
            return "the recorded command cannot be encoded"
        if record.get("command_sha256", sha256(argv)) == sha256(argv) \
                and live.cmdline == b"\0".join((os.fsencode(SHELL), b"-c", argv)) + b"\0":
            return None
    if "command" not in record and "cmdline_sha256" not in record:
        return "the record has no command"
    return f"process {pgid} runs another command than the record's"


def _live_leader(pid: int) -> LiveLeader | None:
    """/proc's view of `pid` for `orphan_unproven`; None if it is gone or a zombie."""
    stat = procfs.proc_stat(pid)
    if stat is None or not stat.alive:
        return None
    return LiveLeader(stat.start_ticks, stat.pgrp, procfs.cmdline(pid) or b"")
