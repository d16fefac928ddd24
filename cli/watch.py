"""Wait for tasks to end, showing live progress: `cluster submit --wait` and `cluster wait`.

The master is polled (no push channel exists); each poll is one request per task for a
few tasks, or one listing for many. On a terminal, rich progress bars (one per task, up
to `MAX_BARS`, plus a total) are drawn on stderr; otherwise one plain line per task is
printed to stdout as it ends, so logs of scripted runs stay readable. A task is over
when it is in a terminal state: the master re-queues a FAILED/LOST task with retries
left before anyone can observe the FAILED state, so a terminal state seen here is final.

Contract: `watch()` returns the last known task objects, in the order of `ids`, when
every task is terminal; raises ClusterError when a task is unknown, the master cannot be
reached, or `timeout` passes (the tasks keep running in every case).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from cli.client import ClusterError, MasterClient
from cli.render import STATE_STYLES, TERMINAL, duration, runtime, stderr, stdout, task_label

__all__ = ["MAX_BARS", "summarize", "watch"]

MAX_BARS = 20
PER_TASK_POLL_LIMIT = 10  # more ids than this: poll one listing instead of each task


def _fetch(client: MasterClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    if len(ids) <= PER_TASK_POLL_LIMIT:
        return {tid: client.task(tid) for tid in ids}
    by_id = {str(t.get("id")): t for t in client.tasks()}
    missing = [tid for tid in ids if tid not in by_id]
    if missing:
        client.task(missing[0])  # raises the master's own "no task with id" error
    return {tid: by_id[tid] for tid in ids}


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
    if progress:
        return _watch_bars(client, ids, tasks, deadline, poll, sleep)
    reported: set[str] = set()
    while True:
        for tid in ids:
            task = tasks[tid]
            if task.get("state") in TERMINAL and tid not in reported:
                reported.add(tid)
                if not quiet:
                    _print_line(task)
        if len(reported) == len(ids):
            return [tasks[tid] for tid in ids]
        _check_deadline(deadline, ids, tasks)
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
    deadline: float | None, ids: list[str], tasks: dict[str, dict[str, Any]]
) -> None:
    if deadline is None or time.monotonic() < deadline:
        return
    waiting = [
        f"{tid} {tasks[tid].get('state')}" for tid in ids if tasks[tid].get("state") not in TERMINAL
    ]
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    raise ClusterError(
        f"timed out waiting for {len(waiting)} task(s): {shown}; they keep "
        f"running (cluster wait {' '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"
    )


def _watch_bars(
    client: MasterClient,
    ids: list[str],
    tasks: dict[str, dict[str, Any]],
    deadline: float | None,
    poll: float,
    sleep: Callable[[float], None],
) -> list[dict[str, Any]]:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=stderr,
        refresh_per_second=8,
    )
    shown = ids[:MAX_BARS]
    with bars:
        total = bars.add_task("total", total=len(ids), state="")
        rows = {
            tid: bars.add_task(escape(f"task {task_label(tasks[tid])}"[:40]), total=1.0, state="")
            for tid in shown
        }
        while True:
            done = 0
            counts: dict[str, int] = {}
            for tid in ids:
                task = tasks[tid]
                state = str(task.get("state"))
                counts[state] = counts.get(state, 0) + 1
                done += state in TERMINAL
                if tid in rows:
                    value = 1.0 if state == "FINISHED" else float(task.get("progress") or 0)
                    style = STATE_STYLES.get(state, "")
                    bars.update(rows[tid], completed=value, state=f"[{style}]{state}[/]")
                    if state in TERMINAL:
                        bars.stop_task(rows[tid])
            summary = " ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
            bars.update(total, completed=done, state=summary)
            if done == len(ids):
                bars.refresh()
                return [tasks[tid] for tid in ids]
            _check_deadline(deadline, ids, tasks)
            sleep(poll)
            tasks = _fetch(client, ids)


def summarize(final: list[dict[str, Any]], *, json_output: bool) -> int:
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
    for t in failed:
        why = t.get("message") or ""
        if not why and t.get("exit_code") is not None:
            why = f"exit code {t['exit_code']}"
        hint = f" (see: cluster logs {t.get('id')} --stderr)" if t.get("state") == "FAILED" else ""
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
