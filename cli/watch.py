"""Wait for tasks to end, showing live progress: `cluster submit --wait` and `cluster wait`.

The master is polled; each poll is one request per task for a few tasks, or one listing for
many. On a terminal a board is redrawn on stderr: one bar per task for at most `MAX_BARS`
tasks — running and failed ones first, then pending, then finished, with "+N more" for the
rest — whose clocks run while the task runs, and a total that counts each running task's
progress (FINISHED counts 1; a FAILED, KILLED or LOST task only what it had done, so a lone
LOST task never shows 100%). Otherwise one plain line per task is printed to stdout as it
ends, so logs of scripted runs stay readable. While a task is PENDING the board (or one
stderr line per new reason) says why it waits. A task is over when it is in a terminal
state: the master re-queues a FAILED/LOST task with retries left before anyone can observe
the FAILED state, so a terminal state seen here is final.

Contract: `watch()` returns the last known task objects, in the order of `ids`, when every
task is terminal; raises ClusterError when a task is unknown or the master cannot be
reached, and `WaitTimeout` (exit code 124) when `timeout` passes (the tasks keep running in
every case).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.client import ClusterError, MasterClient
from cli.options import EXIT_TIMEOUT, again
from cli.render import STATE_STYLES, TERMINAL, duration, runtime, stderr, stdout, task_label
from cli.why import id_key, pending_reason

__all__ = ["MAX_BARS", "WaitTimeout", "board", "pick_rows", "summarize", "watch"]

MAX_BARS = 20
PER_TASK_POLL_LIMIT = 10  # more ids than this: poll one listing instead of each task
REASON_EVERY = 2.0  # seconds between looks at the slaves while a task is PENDING
_ORDER = {
    "RUNNING": 0,
    "STAGING": 0,
    "FAILED": 1,
    "LOST": 1,
    "KILLED": 1,
    "PENDING": 2,
    "FINISHED": 3,
}


class WaitTimeout(ClusterError):
    """`--timeout` passed before every task ended (exit code 124)."""

    exit_code = EXIT_TIMEOUT


def _fetch(client: MasterClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    if len(ids) <= PER_TASK_POLL_LIMIT:
        return {tid: client.task(tid) for tid in ids}
    by_id = {str(t.get("id")): t for t in client.tasks()}
    missing = [tid for tid in ids if tid not in by_id]
    if missing:
        client.task(missing[0])  # raises the master's own "no task with id" error
    return {tid: by_id[tid] for tid in ids}


def pick_rows(ids: list[str], tasks: dict[str, dict[str, Any]], limit: int) -> list[str]:
    """The ids to draw: running, then failed, then pending, then finished; in submit order
    within each group."""
    position = {tid: i for i, tid in enumerate(ids)}
    ranked = sorted(ids, key=lambda t: (_ORDER.get(str(tasks[t].get("state")), 2), position[t]))
    return ranked[:limit]


def _shown_progress(task: dict[str, Any]) -> float:
    if task.get("state") == "FINISHED":
        return 1.0
    return max(0.0, min(1.0, float(task.get("progress") or 0)))


def board(
    ids: list[str],
    tasks: dict[str, dict[str, Any]],
    now: float,
    reason: str = "",
    limit: int = MAX_BARS,
) -> RenderableType:
    """The live view: a bar per shown task, '+N more', the total, and why tasks wait."""
    grid = Table.grid(padding=(0, 1))
    for _ in range(5):
        grid.add_column(no_wrap=True)
    for tid in pick_rows(ids, tasks, limit):
        task = tasks[tid]
        state = str(task.get("state"))
        style = STATE_STYLES.get(state, "")
        grid.add_row(
            Text(f"task {task_label(task)}"[:40]),
            ProgressBar(
                total=1.0,
                completed=_shown_progress(task),
                width=30,
                complete_style=style or "bar.complete",
                finished_style=style or "bar.finished",
            ),
            Text(f"{100 * _shown_progress(task):3.0f}%"),
            Text(state, style=style),
            Text(duration(runtime(task, now)) if task.get("started_at") else "-"),
        )
    hidden = len(ids) - min(limit, len(ids))
    counts: dict[str, int] = {}
    for tid in ids:
        state = str(tasks[tid].get("state"))
        counts[state] = counts.get(state, 0) + 1
    if hidden:
        grid.add_row(Text(f"+{hidden} more", style="dim"), "", "", "", "")
    ended = sum(n for s, n in counts.items() if s in TERMINAL)
    total = sum(_shown_progress(tasks[tid]) for tid in ids) / max(len(ids), 1)
    summary = " ".join(
        f"{n} {s.lower()}" for s, n in sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 2))
    )
    grid.add_row(
        Text("total", style="bold"),
        ProgressBar(total=1.0, completed=total, width=30),
        Text(f"{100 * total:3.0f}%"),
        Text(f"{ended}/{len(ids)} ended"),
        Text(summary),
    )
    if not reason:
        return grid
    return Group(grid, Text(f"waiting: {reason}", style="yellow"))


class _Reasons:
    """Why our oldest PENDING task waits, refreshed every REASON_EVERY seconds."""

    def __init__(self, client: MasterClient, ids: list[str]) -> None:
        self.client, self.ids = client, ids
        self.text = ""
        self._at = float("-inf")

    def update(self, tasks: dict[str, dict[str, Any]]) -> str:
        pending = [tasks[t] for t in self.ids if tasks[t].get("state") == "PENDING"]
        if not pending:
            self.text = ""
            return ""
        if time.monotonic() - self._at < REASON_EVERY:
            return self.text
        self._at = time.monotonic()
        first = min(pending, key=lambda t: id_key(str(t.get("id"))))
        try:
            slaves = self.client.slaves()
            ahead = 0
            if slaves:
                ahead = sum(
                    1
                    for t in self.client.tasks("PENDING")
                    if id_key(str(t.get("id"))) < id_key(str(first.get("id")))
                )
        except ClusterError:
            return self.text  # the next poll reports an unreachable master
        self.text = pending_reason(first, slaves, ahead, master=self.client.master)
        if len(pending) > 1:
            self.text = f"{len(pending)} tasks PENDING: {self.text}"
        return self.text


def watch(
    client: MasterClient,
    ids: list[str],
    *,
    progress: bool,
    quiet: bool = False,
    timeout: float | None = None,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    tasks = _fetch(client, ids)  # fails fast on an unknown id
    reasons = _Reasons(client, ids)
    if progress:
        return _watch_board(client, ids, tasks, deadline, poll, sleep, reasons)
    reported: set[str] = set()
    said = ""
    while True:
        for tid in ids:
            task = tasks[tid]
            if task.get("state") in TERMINAL and tid not in reported:
                reported.add(tid)
                if not quiet:
                    _print_line(task)
        if len(reported) == len(ids):
            return [tasks[tid] for tid in ids]
        why = reasons.update(tasks)
        if why and why != said and not quiet:
            stderr.print(f"waiting: {why}", markup=False)
        said = why
        _check_deadline(deadline, ids, tasks, client)
        sleep(poll)
        tasks = _fetch(client, ids)


def _print_line(task: dict[str, Any]) -> None:
    state = str(task.get("state"))
    line = Text(f"task {task_label(task)} ")
    line.append(state, style=STATE_STYLES.get(state, ""))
    line.append(f" in {duration(runtime(task))}")
    if state != "FINISHED" and task.get("message"):
        line.append(f": {task['message']}")
    stdout.print(line)


def _check_deadline(
    deadline: float | None, ids: list[str], tasks: dict[str, dict[str, Any]], client: MasterClient
) -> None:
    if deadline is None or time.monotonic() < deadline:
        return
    waiting = [
        f"{tid} {tasks[tid].get('state')}" for tid in ids if tasks[tid].get("state") not in TERMINAL
    ]
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    raise WaitTimeout(
        f"timed out waiting for {len(waiting)} task(s): {shown}; they keep "
        f"running (cluster wait{again(client.master)} {' '.join(ids[:5])}"
        f"{' ...' if len(ids) > 5 else ''})"
    )


def _watch_board(
    client: MasterClient,
    ids: list[str],
    tasks: dict[str, dict[str, Any]],
    deadline: float | None,
    poll: float,
    sleep: Callable[[float], None],
    reasons: _Reasons,
) -> list[dict[str, Any]]:
    from rich.live import Live

    shown: list[Any] = [tasks, reasons.update(tasks)]  # what render() draws: tasks, reason

    def render() -> RenderableType:  # called at every refresh: the clocks run
        return board(ids, shown[0], time.time(), shown[1])

    with Live(get_renderable=render, console=stderr, refresh_per_second=4, transient=False):
        while True:
            current: dict[str, dict[str, Any]] = shown[0]
            if all(current[tid].get("state") in TERMINAL for tid in ids):
                return [current[tid] for tid in ids]
            _check_deadline(deadline, ids, current, client)
            sleep(poll)
            fresh = _fetch(client, ids)
            shown[:] = [fresh, reasons.update(fresh)]


def summarize(final: list[dict[str, Any]], *, json_output: bool, master: str = "") -> int:
    """Print what did not finish (stderr) and return the exit code: 0 iff all FINISHED."""
    failed = [t for t in final if t.get("state") != "FINISHED"]
    if not failed:
        if not json_output:
            stdout.print(
                f"all {len(final)} task(s) FINISHED"
                if len(final) > 1
                else f"task {task_label(final[0])} FINISHED"
            )
        return 0
    opts = again(master) if master else ""
    for t in failed:
        why = t.get("message") or ""
        if not why and t.get("exit_code") is not None:
            why = f"exit code {t['exit_code']}"
        hint = (
            f" (see: cluster logs{opts} {t.get('id')} --stderr)"
            if t.get("state") == "FAILED"
            else ""
        )
        stderr.print(
            f"task {task_label(t)} {t.get('state')}" + (f": {why}" if why else "") + hint,
            markup=False,
        )
    stderr.print(
        f"error: {len(failed)} of {len(final)} task(s) did not finish: "
        + ", ".join(f"{t.get('id')} {t.get('state')}" for t in failed[:10])
        + (" ..." if len(failed) > 10 else ""),
        markup=False,
    )
    return 1
