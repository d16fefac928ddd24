"""How the client commands show tasks and slaves to people (rich) and to scripts (JSON).

Tables go to stdout; JSON output is the master's own shape (`{"tasks": [...]}`, one task
object, `{"slaves": [...]}`), so `cluster tasks --json` and `curl .../master/tasks` agree.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "STATE_STYLES",
    "duration",
    "print_json",
    "slaves_table",
    "stderr",
    "stdout",
    "task_details",
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

# Piped output is for grep and less: wide enough that tables are not cut at 80 columns.
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


def _table(columns: list[tuple[str, str, bool]], rows: list[list[Any]]) -> Table:
    """columns: (header, justify, shrinkable). Columns that may not shrink keep the width of
    their widest cell; when the console is too narrow, only the shrinkable ones (a command,
    an address) are cut, with an ellipsis, in proportion to their width."""
    cells = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]
    widest = [
        max([len(header)] + [len(row[i].plain) for row in cells])
        for i, (header, _, _) in enumerate(columns)
    ]
    shrink = [i for i, (_, _, shrinkable) in enumerate(columns) if shrinkable]
    avail = (
        stdout.width
        - 2 * (len(columns) - 1)
        - sum(w for i, w in enumerate(widest) if i not in shrink)
    )
    need = sum(widest[i] for i in shrink)
    widths = list(widest)
    if need > avail:
        for i in shrink:
            widths[i] = max(min(4, widest[i]), widest[i] * max(avail, 0) // max(need, 1))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for (header, justify, _), width in zip(columns, widths):
        table.add_column(
            header,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            width=width,
        )
    for row in cells:
        table.add_row(*row)
    return table


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
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
            ("ID", "right", False),
            ("NAME", "left", True),
            ("STATE", "left", False),
            ("PROGRESS", "right", False),
            ("EXIT", "right", False),
            ("RUNTIME", "right", False),
            ("SLAVE", "left", True),
            ("COMMAND", "left", True),
        ],
        rows,
    )


def _when(epoch: Any) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def task_details(task: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = str(task.get("state", ""))
    attempts, retries = task.get("attempts", 0), task.get("retries", 0)
    rows: list[tuple[str, Any]] = [
        ("id", str(task.get("id"))),
        ("name", str(task.get("name") or "")),
        ("state", state_text(state)),
        ("progress", f"{100 * float(task.get('progress') or 0):.1f}%"),
        ("exit code", "-" if task.get("exit_code") is None else str(task["exit_code"])),
        ("message", str(task.get("message") or "-")),
        ("command", Text(str(task.get("command", "")))),
        ("resources", f"{task.get('cpus')} cpus, {task.get('mem')} MiB"),
        ("timeout", "-" if task.get("timeout") is None else duration(task["timeout"])),
        ("attempts", f"{attempts} (retries allowed: {retries})"),
        ("slave", str(task.get("slave_id") or "-")),
        ("submitted", _when(task.get("submitted_at"))),
        ("started", _when(task.get("started_at"))),
        ("finished", _when(task.get("finished_at"))),
        ("runtime", duration(runtime(task))),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def slaves_table(slaves: list[dict[str, Any]]) -> Table:
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
            ]
        )
    return _table(
        [
            ("ID", "left", False),
            ("ADDRESS", "left", True),
            ("HOSTNAME", "left", True),
            ("STATE", "left", False),
            ("CPUS", "right", False),
            ("MEM MiB", "right", False),
            ("TASKS", "right", False),
            ("SEEN", "right", False),
        ],
        rows,
    )
