"""Validation of the master's HTTP API input — pure, so it is tested without sockets.

Contract: each function returns clean values or raises ``ApiError`` (an HTTP status in the
4xx range and a message for ``{"error": ...}`` that names the offending item and field).
Nothing a client sends makes them raise anything else: this is where hostile input stops.

- ``decode_json(raw)``: a request body to a JSON value. Refuses, before parsing and in
  linear time, nesting deeper than ``LIMITS["max_depth"]`` (json.loads would recurse into a
  RecursionError); refuses invalid UTF-8, the NaN/Infinity literals Python accepts but JSON
  does not, and integers longer than ``LIMITS["max_int_digits"]``; 413 over the body cap.
- ``parse_submit(payload)``: the body of ``POST /master/tasks`` (one object or a list of
  them) to TaskSpecs. Every string must be storable text: no NUL, no lone surrogate
  (``"\\ud800"`` decodes to one, and no database or ``exec`` can take it); every number
  finite and inside its range (``10**400`` is an int Python cannot turn into a float).
- ``parse_task_id``, ``parse_states``, ``parse_log_query``: path ids and query parameters.
- ``parse_page_query``: ``GET /master/tasks?limit&offset&state&name&order`` (contract:
  ``limit`` defaults to 1,000 and is at most 10,000; ``order`` is ``asc`` or ``desc``).
- ``parse_bulk_kill``: the body of ``POST /master/tasks/kill``, ``{"ids": [...]}`` or
  ``{"state": [...], "name": "PREFIX"}`` (at least one of them; never both forms).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlencode

from master.tasks import DEFAULT_RETRY_DELAY, STATES

__all__ = ["ApiError", "TaskSpec", "LIMITS", "decode_json", "parse_submit", "parse_task",
           "check_text", "parse_task_id", "parse_states", "parse_log_query", "shown",
           "PageQuery", "BulkKill", "parse_page_query", "parse_bulk_kill"]

LIMITS = {
    "max_body_bytes": 1024 * 1024,  # aiohttp's default client_max_size, stated here
    "max_depth": 32,  # a submit needs 2 (a list of objects)
    "max_int_digits": 40,
    "max_tasks_per_request": 10_000,
    "max_command_bytes": 64 * 1024,
    "max_name_chars": 256,
    "max_id_chars": 255,  # the database's column
    "max_cpus": 1024.0,
    "max_mem": 16 * 1024 * 1024.0,  # MiB
    "max_timeout": 30 * 24 * 3600.0,
    "max_retries": 100,
    "max_retry_delay": 3600.0,  # seconds before the first retry (later ones double it)
    "max_log_offset": 2**63 - 1,
    "max_log_limit": 2**31 - 1,
    "default_page": 1000,
    "max_page": 10_000,
    "max_offset": 2**53,
    "max_kill_ids": 10_000,
}
DEFAULT_CPUS = 0.1
DEFAULT_MEM = 32.0
_FIELDS = {"command", "name", "cpus", "mem", "timeout", "retries", "retry_delay"}
LOG_STREAMS = ("stdout", "stderr")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DIGITS = re.compile(r"[0-9]{1,19}")


class ApiError(Exception):
    """A request the API refuses: ``status`` (4xx, or 503 from the store) and a message."""

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
    retry_delay: float = DEFAULT_RETRY_DELAY


def shown(value: object, limit: int = 40) -> str:
    """``repr`` of a client's value, cut to ``limit`` characters: safe to echo in an error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- bodies ------------------------------------------------------------------------------


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """True when ``raw``'s JSON arrays/objects nest deeper than ``limit``.

    Linear and cheap: escaped backslashes and quotes are dropped, then strings, then all
    but brackets; only the brackets are walked. Brackets in invalid JSON may be miscounted,
    which is harmless: such a body is refused by the parser anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", text).translate(None, _NOT_BRACKET)
    depth = 0
    for c in brackets:
        if c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _refuse_constant(name: str) -> NoReturn:
    raise ApiError(f"{name} is not a number JSON allows; send a finite number")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > LIMITS["max_int_digits"]:
        raise ApiError(f"number {shown(digits, 24)} has {len(digits)} digits; numbers here "
                       f"have at most {LIMITS['max_int_digits']}")
    return int(digits)


def decode_json(raw: bytes) -> Any:
    """A request body as a JSON value, or ApiError (413 too big, 400 anything else)."""
    cap = LIMITS["max_body_bytes"]
    if len(raw) > cap:
        raise ApiError(f"request body is {len(raw)} bytes; at most {cap} are accepted", 413)
    if nesting_exceeds(raw, int(LIMITS["max_depth"])):
        raise ApiError(f"JSON nested deeper than {LIMITS['max_depth']} levels; a submit is a "
                       "task object or a list of them")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(f"body is not UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except ValueError as exc:  # JSONDecodeError, or int() refusing
        raise ApiError(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # not reachable past nesting_exceeds; kept as a net
        raise ApiError("JSON nested too deeply") from None


# -- strings -----------------------------------------------------------------------------


def check_text(value: str, what: str, *, controls: bool = True) -> str:
    """``value`` if it is storable text: no NUL, no lone surrogate, and — unless
    ``controls`` — no control characters. ApiError naming ``what`` otherwise."""
    if "\0" in value:
        raise ApiError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(f"{what} contains a lone surrogate ({exc.object[exc.start]!r} at "
                       f"{exc.start}), which is not a character; send valid Unicode") from None
    if not controls and _CONTROL.search(value):
        raise ApiError(f"{what} must not contain control characters")
    return value


# -- submit ------------------------------------------------------------------------------


def _number(item: dict[str, Any], key: str, where: str, default: float | None,
            high: float) -> float | None:
    """A float in (0, high], or None when absent and ``default`` is None."""
    value = item.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{where}: {key!r} must be a number, got {type(value).__name__}")
    # Compare before float(): an int such as 10**400 compares exactly but cannot convert.
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(f"{where}: {key!r} must be a finite number")
    if not 0 < value <= high:
        raise ApiError(f"{where}: {key!r} must be > 0 and <= {high:g}, got "
                       f"{shown(value, 24)}")
    return float(value)


def parse_task(item: Any, where: str = "task") -> TaskSpec:
    """One task object of a submit, validated; ApiError names ``where`` and the field."""
    if not isinstance(item, dict):
        raise ApiError(f"{where}: expected a JSON object with a 'command', got "
                       f"{type(item).__name__}")
    unknown = set(item) - _FIELDS
    if unknown:
        names = sorted(unknown, key=str)
        listed = ", ".join(shown(n, 30) for n in names[:5]) + (" …" if len(names) > 5 else "")
        raise ApiError(f"{where}: unknown field(s) {listed}; allowed: "
                       f"{', '.join(sorted(_FIELDS))}")
    command = item.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ApiError(f"{where}: 'command' must be a non-empty string")
    check_text(command, f"{where}: 'command'")
    if len(command.encode("utf-8")) > LIMITS["max_command_bytes"]:
        raise ApiError(f"{where}: 'command' is longer than {LIMITS['max_command_bytes']} bytes")
    name = item.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or len(name) > LIMITS["max_name_chars"]:
        raise ApiError(f"{where}: 'name' must be a string of at most "
                       f"{LIMITS['max_name_chars']} characters")
    check_text(name, f"{where}: 'name'", controls=False)
    cpus = _number(item, "cpus", where, DEFAULT_CPUS, LIMITS["max_cpus"])
    mem = _number(item, "mem", where, DEFAULT_MEM, LIMITS["max_mem"])
    timeout = _number(item, "timeout", where, None, LIMITS["max_timeout"])
    retries = item.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not (
            0 <= retries <= LIMITS["max_retries"]):
        raise ApiError(f"{where}: 'retries' must be an integer from 0 to {LIMITS['max_retries']}")
    retry_delay = item.get("retry_delay")
    if retry_delay is None:
        retry_delay = DEFAULT_RETRY_DELAY
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not (
            0 <= retry_delay <= LIMITS["max_retry_delay"]):  # NaN fails the comparison
        raise ApiError(f"{where}: 'retry_delay' must be a number of seconds from 0 to "
                       f"{LIMITS['max_retry_delay']:g}, got {shown(retry_delay, 24)}")
    assert cpus is not None and mem is not None
    return TaskSpec(command, name, cpus, mem, timeout, retries, float(retry_delay))


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


# -- paths and queries -------------------------------------------------------------------


def parse_task_id(raw: str) -> str:
    """A task id from a path segment (already percent-decoded): text, at most 255 chars."""
    check_text(raw, f"task id {shown(raw)}", controls=False)
    if not raw or len(raw) > LIMITS["max_id_chars"]:
        raise ApiError(f"task id {shown(raw)} must be 1 to {LIMITS['max_id_chars']} "
                       "characters (ids are numbers such as 17)")
    return raw


def parse_states(value: str | None) -> frozenset[str] | None:
    """``?state=RUNNING,PENDING`` (any case) as a set; None when absent or empty."""
    if not value:
        return None
    check_text(value, "'state'", controls=False)
    wanted = frozenset(s.strip().upper() for s in value.split(","))
    bad = wanted - set(STATES)
    if bad:
        listed = ", ".join(shown(s, 20) for s in sorted(bad)[:5])
        raise ApiError(f"unknown state(s) {listed}; expected {', '.join(STATES)}")
    return wanted


def _count(query: Mapping[str, str], key: str, high: int) -> str | None:
    value = query.get(key)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value) or int(value) > high:
        raise ApiError(f"{key!r} must be a whole number from 0 to {high}, got {shown(value)}")
    return value


def parse_log_query(query: Mapping[str, str]) -> dict[str, str]:
    """``stream``, ``offset``, ``limit`` and ``attempt`` (1 or more; whether the task had
    that attempt is the caller's to check) of a log read, checked, as query parameters."""
    out: dict[str, str] = {}
    stream = query.get("stream")
    if stream is not None:
        if stream not in LOG_STREAMS:
            raise ApiError(f"'stream' must be 'stdout' or 'stderr', got {shown(stream)}")
        out["stream"] = stream
    for key, high in (("offset", LIMITS["max_log_offset"]), ("limit", LIMITS["max_log_limit"])):
        value = _count(query, key, int(high))
        if value is not None:
            out[key] = value
    attempt = _count(query, "attempt", int(LIMITS["max_retries"]) + 1)
    if attempt is not None:
        if int(attempt) < 1:
            raise ApiError(f"'attempt' must be 1 or more (attempts count from 1), got "
                           f"{shown(query['attempt'])}")
        out["attempt"] = str(int(attempt))
    return out


@dataclass(frozen=True)
class PageQuery:
    """One page of the task listing: ``states`` None means any, ``name`` a prefix or None."""

    limit: int = int(LIMITS["default_page"])
    offset: int = 0
    states: frozenset[str] | None = None
    name: str | None = None
    order: str = "asc"

    def query_string(self, offset: int) -> str:
        """This query's parameters at another offset (for the ``next`` link)."""
        params: dict[str, str] = {"limit": str(self.limit), "offset": str(offset)}
        if self.states is not None:
            params["state"] = ",".join(s for s in STATES if s in self.states)
        if self.name:
            params["name"] = self.name
        params["order"] = self.order
        return urlencode(params)


def parse_page_query(query: Mapping[str, str]) -> PageQuery:
    """``limit``, ``offset``, ``state``, ``name`` and ``order`` of a listing, checked."""
    limit = _count(query, "limit", int(LIMITS["max_page"]))
    offset = _count(query, "offset", int(LIMITS["max_offset"]))
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(f"'order' must be 'asc' or 'desc', got {shown(order)}")
    name = query.get("name") or None
    if name is not None:
        _check_name(name, "'name'")
    return PageQuery(limit=int(LIMITS["default_page"]) if limit is None else int(limit),
                     offset=0 if offset is None else int(offset),
                     states=parse_states(query.get("state")), name=name, order=order)


def _check_name(name: str, what: str) -> None:
    if len(name) > LIMITS["max_name_chars"]:
        raise ApiError(f"{what} is longer than {LIMITS['max_name_chars']} characters "
                       "(no task name is)")
    check_text(name, what, controls=False)


@dataclass(frozen=True)
class BulkKill:
    """Which tasks a bulk kill names: ``ids``, or a ``states``/``name`` filter."""

    ids: tuple[str, ...] | None = None
    states: frozenset[str] | None = None
    name: str | None = None


def parse_bulk_kill(payload: Any) -> BulkKill:
    """The body of ``POST /master/tasks/kill``; ApiError for anything else. An empty
    filter is refused: killing every task takes ``{"state": ["PENDING", "STAGING",
    "RUNNING"]}``, said out loud."""
    if not isinstance(payload, dict):
        raise ApiError('expected a JSON object: {"ids": [...]} or {"state": [...], '
                       '"name": "PREFIX"}')
    unknown = set(payload) - {"ids", "state", "name"}
    if unknown:
        listed = ", ".join(shown(n, 30) for n in sorted(unknown, key=str)[:5])
        raise ApiError(f"unknown field(s) {listed}; allowed: ids, state, name")
    if "ids" in payload and ("state" in payload or "name" in payload):
        raise ApiError("give either 'ids' or a 'state'/'name' filter, not both")
    if "ids" in payload:
        ids = payload["ids"]
        if not isinstance(ids, list) or not ids:
            raise ApiError("'ids' must be a non-empty list of task ids")
        if len(ids) > LIMITS["max_kill_ids"]:
            raise ApiError(f"too many ids in one request ({len(ids)}); at most "
                           f"{LIMITS['max_kill_ids']}", status=413)
        if not all(isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool))
                   for i in ids):
            raise ApiError("'ids' must hold task ids, such as \"17\"")
        return BulkKill(ids=tuple(dict.fromkeys(parse_task_id(str(i)) for i in ids)))
    states = payload.get("state")
    if states is not None:
        if isinstance(states, str):
            states = states.split(",")
        if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
            raise ApiError("'state' must be a list of task states, such as [\"PENDING\"]")
    name = payload.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError("'name' must be a string (a prefix of task names)")
    wanted = parse_states(",".join(states)) if states else None
    if wanted is None and not name:
        raise ApiError("name the tasks to kill: 'ids', or a 'state' and/or 'name' filter "
                       "(an empty filter would kill every task)")
    if name:
        _check_name(name, "'name'")
    return BulkKill(states=wanted, name=name or None)
