"""How the client commands show tasks and slaves to people (rich) and to scripts (JSON).

Tables go to stdout; JSON output is the master's own shape (`{"tasks": [...], "total": T}`,
one task object, `{"slaves": [...]}`), so `cluster tasks --json` and `curl .../master/tasks`
agree.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

__all__ = [
    "STATE_STYLES",
    "duration",
    "print_json",
    "print_table",
    "slaves_table",
    "stderr",
    "stdout",
    "task_details",
    "usage_text",
    "task_label",
    "tasks_table",
]

TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED", "LOST"})
STATE_STYLES = {
    "PENDING": "yellow",
    "STAGING": "cyan",
    "RUNNING": "blue",
    "FINISHED": "green",
    "FAILED": "red",
    "KILLED": "magenta",
    "LOST": "red",
    "active": "green",
    "disconnected": "yellow",
    "lost": "red",
    "removed": "dim",
}

# Piped output is for grep and less: wide enough that nothing is wrapped at 80 columns
# (tables are never cut when piped: see _table).
stdout = Console(
    highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
)
# Messages on stderr are never wrapped: one error is one line.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def duration(seconds: float | None) -> str:
    """1.2s, 3m04s, 2h05m: short and sortable by eye."""
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def runtime(task: dict[str, Any], now: float | None = None) -> float | None:
    started = task.get("started_at")
    if started is None:
        return None
    end = task.get("finished_at") or (now if now is not None else time.time())
    return float(end) - float(started)


def task_label(task: dict[str, Any]) -> str:
    """`3 (render)`, or just `3` when the name is the id (the master's default)."""
    tid, name = str(task.get("id", "?")), str(task.get("name") or "")
    return tid if not name or name == tid else f"{tid} ({name})"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _cell(value: Any) -> Text:
    return value if isinstance(value, Text) else Text(str(value))


class _Listing:
    """Aligned columns, laid out when printed (so for the console it is printed on)."""

    def __init__(
        self, columns: list[tuple[str, str]], rows: list[list[Any]], shrink: int | None
    ) -> None:
        self.columns, self.shrink = columns, shrink
        self.cells = [[_cell(c) for c in row] for row in rows]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.layout(options.max_width if console.is_terminal else None)

    def layout(self, width: int | None) -> Text:
        headers = [Text(header, style="bold") for header, _ in self.columns]
        widths = [
            max([len(h.plain)] + [len(row[i].plain) for row in self.cells])
            for i, h in enumerate(headers)
        ]
        if self.shrink is not None and width is not None:
            excess = sum(widths) + 2 * (len(widths) - 1) - width
            if excess > 0:
                widths[self.shrink] = max(min(8, widths[self.shrink]), widths[self.shrink] - excess)
        out = Text(no_wrap=True, overflow="ignore")
        for n, row in enumerate([headers, *self.cells]):
            line = Text()
            last = len(row) - 1
            for i, (cell, w) in enumerate(zip(row, widths)):
                if len(cell.plain) > w:  # only the shrinkable column
                    cell = cell.copy()
                    cell.truncate(w, overflow="ellipsis")
                pad = w - len(cell.plain)
                if self.columns[i][1] == "right":
                    line.append(" " * pad)
                    line.append_text(cell)
                else:
                    line.append_text(cell)
                    if i < last:
                        line.append(" " * pad)
                if i < last:
                    line.append("  ")
            line.rstrip()
            if n:
                out.append("\n")
            out.append_text(line)
        return out


def _table(columns: list[tuple[str, str]], rows: list[list[Any]], shrink: int | None) -> _Listing:
    """Aligned columns (header, justify): no trailing spaces, never wrapped.

    Identifiers are never cut. On a terminal too narrow for the rows, only column `shrink`
    (a command) gives way, down to a few characters, with an ellipsis; piped output is never
    cut, so grep sees whole commands. Print it with `print_table`.
    """
    return _Listing(columns, rows, shrink)


def print_table(table: _Listing) -> None:
    """A table from `_table` on stdout, whole: no wrapping, no cropping."""
    stdout.print(table, soft_wrap=True)


def tasks_table(tasks: list[dict[str, Any]]) -> _Listing:
    now = time.time()
    rows = []
    for t in tasks:
        exit_code = t.get("exit_code")
        rows.append(
            [
                str(t.get("id", "")),
                str(t.get("name") or ""),
                state_text(str(t.get("state", ""))),
                f"{100 * float(t.get('progress') or 0):.0f}%",
                "-" if exit_code is None else str(exit_code),
                duration(runtime(t, now)),
                str(t.get("slave_id") or "-"),
                " ".join(str(t.get("command", "")).split()),
            ]
        )
    return _table(
        [
            ("ID", "right"),
            ("NAME", "left"),
            ("STATE", "left"),
            ("PROGRESS", "right"),
            ("EXIT", "right"),
            ("RUNTIME", "right"),
            ("SLAVE", "left"),
            ("COMMAND", "left"),
        ],
        rows,
        shrink=7,
    )


def _when(epoch: Any) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def _sandbox(task: dict[str, Any], attempt: Any) -> str:
    """Where the slave keeps this attempt's files (slave/executor.py's layout)."""
    slave = task.get("slave_id")
    return (
        f"sandboxes/{task.get('id')}@{attempt} in slave {slave}'s --work-dir "
        f"(with cluster up: WORK_DIR/slaves/{slave}/)"
    )


def _mib(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def usage_text(usage: Any) -> str:
    """`1.25 cpu-s, 20.0 MiB (peak 22.0 MiB), from cgroups v2`, or `-` when none."""
    if not isinstance(usage, dict):
        return "-"
    return (
        f"{float(usage.get('cpu_seconds') or 0):.2f} cpu-s, {_mib(usage.get('mem_mib'))} MiB "
        f"(peak {_mib(usage.get('mem_peak_mib'))} MiB), from {usage.get('source') or '?'}"
    )


def attempts_table(attempts: list[dict[str, Any]]) -> _Listing:
    """One row per attempt: where it ran, when, how it ended, what it used."""
    rows = []
    for a in attempts:
        u = a.get("usage") if isinstance(a.get("usage"), dict) else {}
        code = a.get("exit_code")
        rows.append(
            [
                str(a.get("attempt", "?")),
                str(a.get("slave_id") or "-"),
                state_text(str(a.get("state", ""))),
                "-" if code is None else str(code),
                _when(a.get("started_at") or a.get("launched_at")),
                duration(runtime(a)),
                "-" if not u else f"{float(u.get('cpu_seconds') or 0):.2f}",
                _mib(u.get("mem_peak_mib")) if u else "-",
                " ".join(str(a.get("message") or "-").split()),
            ]
        )
    return _table(
        [
            ("ATTEMPT", "right"),
            ("SLAVE", "left"),
            ("STATE", "left"),
            ("EXIT", "right"),
            ("STARTED", "left"),
            ("RUNTIME", "right"),
            ("CPU-S", "right"),
            ("PEAK MiB", "right"),
            ("MESSAGE", "left"),
        ],
        rows,
        shrink=8,
    )


def task_details(task: dict[str, Any], waiting: str = "") -> RenderableType:
    """Every field for people, then every attempt; `waiting`: why a PENDING task has not
    started (the master's retry backoff, or cli/why.py)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = str(task.get("state", ""))
    history = task.get("attempts") if isinstance(task.get("attempts"), list) else []
    attempts = task.get("attempt") if "attempt" in task else task.get("attempts", 0)
    retries = task.get("retries", 0)
    delay = task.get("retry_delay")
    retry_at = task.get("retry_at")
    rows: list[tuple[str, Any]] = [
        ("id", str(task.get("id"))),
        ("name", str(task.get("name") or "")),
        ("state", state_text(state)),
        *([("waiting", Text(waiting, style="yellow"))] if waiting else []),
        ("progress", f"{100 * float(task.get('progress') or 0):.1f}%"),
        ("exit code", "-" if task.get("exit_code") is None else str(task["exit_code"])),
        ("message", str(task.get("message") or "-")),
        ("command", Text(str(task.get("command", "")))),
        ("resources", f"{task.get('cpus')} cpus, {task.get('mem')} MiB"),
        ("timeout", "-" if task.get("timeout") is None else duration(task["timeout"])),
        (
            "attempts",
            f"{attempts} (retries allowed: {retries}"
            + (f", {float(delay):g}s apart, doubling)" if retries and delay else ")"),
        ),
        *([("retry at", _when(retry_at))] if retry_at is not None else []),
        ("usage", usage_text(task.get("usage"))),
        ("slave", str(task.get("slave_id") or "-")),
        *([("sandbox", _sandbox(task, attempts))] if task.get("slave_id") and attempts else []),
        ("submitted", _when(task.get("submitted_at"))),
        ("started", _when(task.get("started_at"))),
        ("finished", _when(task.get("finished_at"))),
        ("runtime", duration(runtime(task))),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    if not history:
        return grid
    return Group(grid, Text(""), attempts_table(history))


def slaves_table(slaves: list[dict[str, Any]]) -> _Listing:
    now = time.time()
    rows = []
    for s in slaves:
        last = s.get("last_contact")
        rows.append(
            [
                str(s.get("id", "")),
                str(s.get("pid", "")),
                str(s.get("hostname", "")),
                state_text(str(s.get("state", ""))),
                f"{float(s.get('used_cpus') or 0):g}/{float(s.get('cpus') or 0):g}",
                f"{float(s.get('used_mem') or 0):g}/{float(s.get('mem') or 0):g}",
                str(len(s.get("tasks") or [])),
                "-" if last is None else f"{duration(max(0.0, now - float(last)))} ago",
                " ".join(str(s[k]) for k in ("isolation", "cgroup_version") if s.get(k)) or "-",
            ]
        )
    return _table(
        [
            ("ID", "left"),
            ("ADDRESS", "left"),
            ("HOSTNAME", "left"),
            ("STATE", "left"),
            ("CPUS", "right"),
            ("MEM MiB", "right"),
            ("TASKS", "right"),
            ("SEEN", "right"),
            ("ISOLATION", "left"),
        ],
        rows,
        shrink=None,
    )
