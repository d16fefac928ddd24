"""Validation of the master's HTTP API input — pure, so it is tested without sockets.

`parse_submit(payload)` turns the JSON body of `POST /master/tasks` (one object or a list of
them) into TaskSpecs, or raises ApiError with a message that names the offending item and
field. Limits keep one request from exhausting the master.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ApiError", "TaskSpec", "parse_submit", "LIMITS"]

LIMITS = {
    "max_tasks_per_request": 10_000,
    "max_command_bytes": 64 * 1024,
    "max_name_chars": 256,
    "max_cpus": 1024.0,
    "max_mem": 16 * 1024 * 1024.0,  # MiB
    "max_timeout": 30 * 24 * 3600.0,
    "max_retries": 100,
}
DEFAULT_CPUS = 0.1
DEFAULT_MEM = 32.0
_FIELDS = {"command", "name", "cpus", "mem", "timeout", "retries"}


class ApiError(Exception):
    """A bad request: `status` and a message for `{"error": ...}`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskSpec:
    command: str
    name: str
    cpus: float
    mem: float
    timeout: float | None
    retries: int


def _number(item: dict[str, Any], key: str, where: str, default: float | None,
            low: float, high: float, *, allow_zero: bool = False) -> float | None:
    value = item.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{where}: {key!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ApiError(f"{where}: {key!r} must be a finite number")
    if value < low or value > high or (value == 0 and not allow_zero):
        raise ApiError(f"{where}: {key!r} must be > 0 and <= {high:g}, got {value:g}")
    return value


def parse_task(item: Any, where: str = "task") -> TaskSpec:
    if not isinstance(item, dict):
        raise ApiError(f"{where}: expected a JSON object with a 'command', got "
                       f"{type(item).__name__}")
    unknown = set(item) - _FIELDS
    if unknown:
        raise ApiError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                       f"allowed: {', '.join(sorted(_FIELDS))}")
    command = item.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ApiError(f"{where}: 'command' must be a non-empty string")
    if len(command.encode("utf-8", "surrogatepass")) > LIMITS["max_command_bytes"]:
        raise ApiError(f"{where}: 'command' is longer than {LIMITS['max_command_bytes']} bytes")
    if "\0" in command:
        raise ApiError(f"{where}: 'command' must not contain NUL bytes")
    name = item.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or len(name) > LIMITS["max_name_chars"]:
        raise ApiError(f"{where}: 'name' must be a string of at most "
                       f"{LIMITS['max_name_chars']} characters")
    cpus = _number(item, "cpus", where, DEFAULT_CPUS, 0.0, LIMITS["max_cpus"])
    mem = _number(item, "mem", where, DEFAULT_MEM, 0.0, LIMITS["max_mem"])
    timeout = _number(item, "timeout", where, None, 0.0, LIMITS["max_timeout"])
    retries = item.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not (
            0 <= retries <= LIMITS["max_retries"]):
        raise ApiError(f"{where}: 'retries' must be an integer from 0 to {LIMITS['max_retries']}")
    assert cpus is not None and mem is not None
    return TaskSpec(command, name, cpus, mem, timeout, retries)


def parse_submit(payload: Any) -> list[TaskSpec]:
    """The tasks of a submit request, all valid, or ApiError for the first bad one."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ApiError("empty list: submit at least one task")
    if len(items) > LIMITS["max_tasks_per_request"]:
        raise ApiError(f"too many tasks in one request ({len(items)}); at most "
                       f"{LIMITS['max_tasks_per_request']}", status=413)
    if len(items) == 1:
        return [parse_task(items[0])]
    return [parse_task(item, f"task {i}") for i, item in enumerate(items)]
