"""The task record and its state machine — pure: no I/O, no clock, no asyncio.

Contract (DESIGN.md §3.2): a task goes ``PENDING`` (queued) -> ``STAGING`` (launch sent)
-> ``RUNNING`` -> one terminal state ``FINISHED`` / ``FAILED`` / ``KILLED`` / ``LOST``.
The only ways out of those rules are explicit: ``launch()`` (PENDING -> STAGING, counts an
attempt) and ``requeue()`` (FAILED or LOST -> PENDING while retries are left).

API choice: every mutating method returns ``True`` when it changed the record and
``False`` when it ignored the request (a duplicate, an update for an older attempt, or an
illegal move such as RUNNING after FINISHED). Nothing here raises for a late or repeated
status update: the network delivers those routinely, and the master just drops them.
Call ``record.check(state, attempt=...)`` first when you need to know *why* an update
would be ignored (for a log line or an HTTP 409).

Every timestamp comes from the caller as ``now`` (epoch seconds), so tests own time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

PENDING = "PENDING"
STAGING = "STAGING"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
LOST = "LOST"

#: All seven names, in the order of ``cluster.TaskState``'s numbers.
STATES: tuple[str, ...] = (PENDING, STAGING, RUNNING, FINISHED, FAILED, KILLED, LOST)
#: A task in one of these never changes again (except FAILED/LOST through ``requeue()``).
TERMINAL_STATES: frozenset[str] = frozenset({FINISHED, FAILED, KILLED, LOST})
#: Launched on a slave and holding its resources.
ACTIVE_STATES: frozenset[str] = frozenset({STAGING, RUNNING})
#: Terminal states that ``requeue()`` may turn back into PENDING.
REQUEUEABLE_STATES: frozenset[str] = frozenset({FAILED, LOST})

# Moves that ``transition()`` accepts; STAGING and PENDING are entered only through
# ``launch()`` and ``requeue()``.
_ALLOWED: dict[str, frozenset[str]] = {
    PENDING: frozenset({KILLED}),
    STAGING: frozenset({RUNNING}) | TERMINAL_STATES,
    RUNNING: TERMINAL_STATES,
}

RejectionKind = Literal["duplicate", "stale_attempt", "illegal"]

#: Seconds between a failed attempt and the next by default (doubling; master/attempts.py).
DEFAULT_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class Rejection:
    """Why an update would be ignored; ``reason`` is a sentence fit for a log or a 409."""

    kind: RejectionKind
    reason: str


def _clamp_progress(value: float) -> float | None:
    """0..1, or None for NaN (which would poison every later comparison)."""
    if math.isnan(value):
        return None
    return min(1.0, max(0.0, float(value)))


@dataclass
class TaskRecord:
    """Everything the master knows about one task; ``to_json()`` is the HTTP API's shape.

    ``attempts`` counts launches so far (0 while never launched); slaves echo it as the
    ``attempt`` of their updates, which is how updates from an earlier run are told apart.
    ``retries`` is how many *extra* launches are allowed after the first; ``retry_delay``
    the seconds to wait before the first of them (doubling for each later one).
    """

    id: str
    name: str
    command: str
    cpus: float
    mem: float
    timeout: float | None = None
    retries: int = 0
    state: str = PENDING
    progress: float = 0.0
    exit_code: int | None = None
    message: str = ""
    slave_id: str | None = None
    attempts: int = 0
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    retry_delay: float = DEFAULT_RETRY_DELAY

    @classmethod
    def new(
        cls,
        id: str,
        *,
        command: str,
        cpus: float,
        mem: float,
        now: float,
        name: str = "",
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> TaskRecord:
        """A freshly submitted PENDING task; ``name`` defaults to the id."""
        return cls(
            id=id,
            name=name or id,
            command=command,
            cpus=float(cpus),
            mem=float(mem),
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
            submitted_at=now,
            updated_at=now,
        )

    # -- views ---------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def retries_left(self) -> int:
        """Launches still allowed after the current one (first run + ``retries`` in all)."""
        return max(0, self.retries + 1 - self.attempts)

    def to_json(self) -> dict[str, Any]:
        """Exactly the record's fields, by name: the task shape of the HTTP API."""
        # Every field is a scalar, so a plain dict is enough (asdict() deep-copies, and was
        # half of the master's CPU in the cluster benchmark).
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        """Inverse of ``to_json()``; unknown keys are ignored so old rows still load."""
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})

    # -- rules ---------------------------------------------------------------------------

    def check(self, state: str, *, attempt: int | None = None) -> Rejection | None:
        """None when ``transition(state, attempt=attempt)`` would apply, else why not.

        ``attempt`` None skips the attempt check (for the master's own decisions, e.g. a
        user's kill or declaring a slave lost); a slave's update should always carry it.
        An attempt other than the current one is stale: older ones come from an earlier
        run, newer ones were never launched by this master.
        """
        if state not in STATES:
            return Rejection("illegal", f"unknown task state {state!r}; expected one of {STATES}")
        if attempt is not None and attempt != self.attempts:
            return Rejection(
                "stale_attempt",
                f"update for attempt {attempt} of task {self.id} ignored: "
                f"the task is on attempt {self.attempts}",
            )
        if state == self.state:
            return Rejection("duplicate", f"task {self.id} is already {state}")
        if self.state in TERMINAL_STATES:
            return Rejection(
                "illegal",
                f"task {self.id} is already {self.state}, which is final; {state} ignored",
            )
        if state not in _ALLOWED.get(self.state, frozenset()):
            hint = {STAGING: " (use launch())", PENDING: " (use requeue())"}.get(state, "")
            return Rejection(
                "illegal", f"task {self.id} cannot go from {self.state} to {state}{hint}"
            )
        return None

    # -- moves ---------------------------------------------------------------------------

    def launch(self, slave_id: str, now: float) -> bool:
        """PENDING -> STAGING on ``slave_id``; starts attempt ``attempts + 1``.

        Call it just before sending LaunchTasksMessage, and put the new ``attempts`` in
        the message's ``TaskInfo.attempt``. False if the task is not PENDING.
        """
        if self.state != PENDING:
            return False
        self.state = STAGING
        self.slave_id = slave_id
        self.attempts += 1
        self.progress = 0.0
        self.exit_code = None
        self.message = ""
        self.started_at = None
        self.finished_at = None
        self.updated_at = now
        return True

    def unlaunch(self, now: float) -> bool:
        """Undo ``launch()`` whose LaunchTasksMessage was never sent (its STAGING state
        could not be stored): STAGING -> PENDING, the attempt not counted. False otherwise."""
        if self.state != STAGING or self.attempts == 0:
            return False
        self.state = PENDING
        self.slave_id = None
        self.attempts -= 1
        self.updated_at = now
        return True

    def transition(
        self,
        state: str,
        now: float,
        *,
        attempt: int | None = None,
        progress: float | None = None,
        exit_code: int | None = None,
        message: str | None = None,
    ) -> bool:
        """Apply a status change; False (record untouched) when ``check()`` rejects it.

        RUNNING stamps ``started_at``; a terminal state stamps ``finished_at`` and FINISHED
        forces ``progress`` to 1.0. ``progress`` is clamped to 0..1 (NaN is dropped).
        """
        if self.check(state, attempt=attempt) is not None:
            return False
        self.state = state
        if progress is not None:
            clamped = _clamp_progress(progress)
            if clamped is not None:
                self.progress = clamped
        if exit_code is not None:
            self.exit_code = exit_code
        if message is not None:
            self.message = message
        if state == RUNNING:
            self.started_at = now
        if state in TERMINAL_STATES:
            self.finished_at = now
            if state == FINISHED:
                self.progress = 1.0
        self.updated_at = now
        return True

    def set_progress(self, progress: float, now: float, *, attempt: int | None = None) -> bool:
        """Record a progress report (clamped to 0..1) while STAGING or RUNNING.

        Progress may go down within an attempt (a task is free to report what it likes);
        False for a stale attempt, a task not on a slave, NaN, or an unchanged value.
        """
        if attempt is not None and attempt != self.attempts:
            return False
        if self.state not in ACTIVE_STATES:
            return False
        clamped = _clamp_progress(progress)
        if clamped is None or clamped == self.progress:
            return False
        self.progress = clamped
        self.updated_at = now
        return True

    def requeue(self, now: float) -> bool:
        """FAILED or LOST -> PENDING when a retry is left (``attempts <= retries``).

        The master decides when to retry (e.g. at once after LOST, or after a back-off);
        this only enforces the budget. The failed run's ``message`` is kept so the user
        can see why the task is running again; ``exit_code`` and timestamps are cleared.
        """
        if self.state not in REQUEUEABLE_STATES or self.attempts > self.retries:
            return False
        self.state = PENDING
        self.slave_id = None
        self.progress = 0.0
        self.exit_code = None
        self.started_at = None
        self.finished_at = None
        self.updated_at = now
        return True


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TaskRecord))
_FIELD_SET: frozenset[str] = frozenset(_FIELD_NAMES)
