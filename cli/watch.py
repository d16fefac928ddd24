"""Wait for tasks to end, showing live progress: `cluster submit --wait` and `cluster wait`.

The tasks are followed by `cli.follow.Follower`: through the master's event stream when it
has one (one fetch, then events: no request per task or per second), else by polling. On a
terminal a board is redrawn on stderr: one bar per task for at most `MAX_BARS` tasks —
running and failed ones first, then pending, then finished, with "+N more" for the rest —
whose clocks run while the task runs, and a total that counts each running task's progress
(FINISHED counts 1; a FAILED, KILLED or LOST task only what it had done, so a lone LOST task
never shows 100%). Drawing costs O(MAX_BARS) whatever the number of tasks (`TaskSet` keeps
the totals). Otherwise one plain line per task is printed to stdout as it ends, so logs of
scripted runs stay readable. While a task is PENDING the board (or one stderr line per new
reason) says why it waits. A task is over when it is final (`cli.taskset.is_final`): a
FAILED/LOST task with retries left is re-queued by the master, so it is waited for again.

Contract: `watch()` returns the last known task objects, in the order of `ids`, when every
task is final; raises ClusterError when a task is unknown or the master cannot be reached,
and `WaitTimeout` (exit code 124) when `timeout` passes (the tasks keep running in every
case).
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
from cli.follow import Follower
from cli.options import EXIT_TIMEOUT, again
from cli.render import STATE_STYLES, duration, runtime, stderr, stdout, task_label
from cli.taskset import ORDER, TaskSet, shown_progress
from cli.why import id_key, pending_reason, queue_matters

__all__ = [
    "MAX_BARS",
    "WaitTimeout",
    "board",
    "draw_board",
    "pick_rows",
    "summarize",
    "watch",
    "why_pending",
]

MAX_BARS = 20
REASON_EVERY = 2.0  # seconds between looks at the slaves while a task is PENDING
STEP = 1.0  # seconds the loop waits for events at most (the deadline is checked between)


class WaitTimeout(ClusterError):
    """`--timeout` passed before every task ended (exit code 124)."""

    exit_code = EXIT_TIMEOUT


def pick_rows(ids: list[str], tasks: dict[str, dict[str, Any]], limit: int) -> list[str]:
    """The ids to draw: running, then failed, then pending, then finished; in submit order
    within each group."""
    return TaskSet(ids, tasks).rows(limit)


def board(
    ids: list[str],
    tasks: dict[str, dict[str, Any]],
    now: float,
    reason: str = "",
    limit: int = MAX_BARS,
) -> RenderableType:
    """The live view of `tasks` (see `draw_board`)."""
    return draw_board(TaskSet(ids, tasks), now, reason, limit)


def draw_board(
    view: TaskSet, now: float, reason: str = "", limit: int = MAX_BARS
) -> RenderableType:
    """The live view: a bar per shown task, '+N more', the total, and why tasks wait."""
    grid = Table.grid(padding=(0, 1))
    for _ in range(5):
        grid.add_column(no_wrap=True)
    for tid in view.rows(limit):
        task = view.tasks[tid]
        state = str(task.get("state"))
        style = STATE_STYLES.get(state, "")
        grid.add_row(
            Text(f"task {task_label(task)}"[:40]),
            ProgressBar(
                total=1.0,
                completed=shown_progress(task),
                width=30,
                complete_style=style or "bar.complete",
                finished_style=style or "bar.finished",
            ),
            Text(f"{100 * shown_progress(task):3.0f}%"),
            Text(state, style=style),
            Text(duration(runtime(task, now)) if task.get("started_at") else "-"),
        )
    count = len(view.ids)
    hidden = count - min(limit, count)
    if hidden:
        grid.add_row(Text(f"+{hidden} more", style="dim"), "", "", "", "")
    total = view.total_progress
    summary = " ".join(
        f"{n} {s.lower()}"
        for s, n in sorted(view.counts.items(), key=lambda kv: ORDER.get(kv[0], 2))
        if n
    )
    grid.add_row(
        Text("total", style="bold"),
        ProgressBar(total=1.0, completed=total, width=30),
        Text(f"{100 * total:3.0f}%"),
        Text(f"{view.ended}/{count} ended"),
        Text(summary),
    )
    if not reason:
        return grid
    return Group(grid, Text(f"waiting: {reason}", style="yellow"))


class _Reasons:
    """Why our oldest PENDING task waits: looked at again at most every REASON_EVERY
    seconds, and only when something happened since (an event or a fetch)."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.text = ""
        self._at = float("-inf")
        self._seen = -1  # follower.activity at the last look

    def update(self) -> str:
        f = self.follower
        with f.lock:
            pending = f.view.pending()
        if not pending:
            self.text = ""
            return ""
        if f.activity == self._seen or time.monotonic() - self._at < REASON_EVERY:
            return self.text
        self._at, self._seen = time.monotonic(), f.activity
        first = min(pending, key=lambda t: id_key(str(t.get("id"))))
        try:
            self.text = why_pending(f.client, first)
        except ClusterError:
            return self.text  # the next fetch reports an unreachable master
        if len(pending) > 1:
            self.text = f"{len(pending)} tasks PENDING: {self.text}"
        return self.text


def why_pending(client: MasterClient, task: dict[str, Any]) -> str:
    """Why `task` (PENDING) waits, asking the master: its slaves, and the older PENDING
    tasks only when that count matters (a slave has room), so a busy cluster costs one
    request. Raises ClusterError."""
    slaves = client.slaves()
    ahead = 0
    if queue_matters(task, slaves):
        mine = id_key(str(task.get("id")))
        ahead = sum(1 for t in client.tasks("PENDING") if id_key(str(t.get("id"))) < mine)
    return pending_reason(task, slaves, ahead, master=client.master)


def watch(
    client: MasterClient,
    ids: list[str],
    *,
    progress: bool,
    quiet: bool = False,
    timeout: float | None = None,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    use_events: bool = True,
) -> list[dict[str, Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    # Fails fast on an unknown id.
    follower = Follower(client, ids, use_events=use_events, poll=poll, sleep=sleep)
    try:
        reasons = _Reasons(follower)
        if progress:
            return _watch_board(follower, deadline, reasons)
        return _watch_lines(follower, deadline, reasons, quiet)
    finally:
        follower.close()


def _watch_lines(
    follower: Follower, deadline: float | None, reasons: _Reasons, quiet: bool
) -> list[dict[str, Any]]:
    view = follower.view
    said = ""
    while True:
        ended = list(dict.fromkeys(view.newly_final))
        view.newly_final.clear()
        if not quiet:
            for tid in ended:
                _print_line(view.tasks[tid])
        if view.done:
            return view.in_order()
        why = reasons.update()
        if why and why != said and not quiet:
            stderr.print(f"waiting: {why}", markup=False)
        said = why
        _check_deadline(deadline, follower)
        follower.step(_step_timeout(deadline))


def _step_timeout(deadline: float | None) -> float:
    if deadline is None:
        return STEP
    return max(0.0, min(STEP, deadline - time.monotonic()))


def _print_line(task: dict[str, Any]) -> None:
    state = str(task.get("state"))
    line = Text(f"task {task_label(task)} ")
    line.append(state, style=STATE_STYLES.get(state, ""))
    line.append(f" in {duration(runtime(task))}")
    if state != "FINISHED" and task.get("message"):
        line.append(f": {task['message']}")
    stdout.print(line)


def _check_deadline(deadline: float | None, follower: Follower) -> None:
    if deadline is None or time.monotonic() < deadline:
        return
    with follower.lock:
        view = follower.view
        waiting = [f"{tid} {view.tasks[tid].get('state')}" for tid in view.waiting()]
    ids = follower.ids
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    raise WaitTimeout(
        f"timed out waiting for {len(waiting)} task(s): {shown}; they keep "
        f"running (cluster wait{again(follower.client.master)} {' '.join(ids[:5])}"
        f"{' ...' if len(ids) > 5 else ''})"
    )


def _watch_board(
    follower: Follower, deadline: float | None, reasons: _Reasons
) -> list[dict[str, Any]]:
    from rich.live import Live

    shown = [reasons.update()]  # the reason render() draws

    def render() -> RenderableType:  # called at every refresh: the clocks run
        with follower.lock:
            return draw_board(follower.view, time.time(), shown[0])

    with Live(get_renderable=render, console=stderr, refresh_per_second=4, transient=False):
        while True:
            if follower.view.done:
                return follower.view.in_order()
            _check_deadline(deadline, follower)
            follower.step(_step_timeout(deadline))
            shown[0] = reasons.update()


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
