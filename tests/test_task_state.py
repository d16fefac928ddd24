"""The task state machine: legal moves, ignored late/duplicate/stale updates, retries."""

from __future__ import annotations

import math

import pytest

from master.tasks import (
    ACTIVE_STATES,
    FAILED,
    FINISHED,
    KILLED,
    LOST,
    PENDING,
    RUNNING,
    STAGING,
    STATES,
    TERMINAL_STATES,
    TaskRecord,
)
from protos import cluster_pb2

API_KEYS = {
    "id", "name", "command", "cpus", "mem", "timeout", "retries", "state", "progress",
    "exit_code", "message", "slave_id", "attempts", "submitted_at", "started_at",
    "finished_at", "updated_at", "retry_delay",
}  # fmt: skip


def new(retries: int = 0) -> TaskRecord:
    return TaskRecord.new("1", command="sleep 1", cpus=1, mem=64, now=100.0, retries=retries)


def running(retries: int = 0) -> TaskRecord:
    task = new(retries)
    assert task.launch("s1", 101.0)
    assert task.transition(RUNNING, 102.0, attempt=1)
    return task


def in_state(state: str) -> TaskRecord:
    task = new()
    if state == PENDING:
        return task
    task.launch("s1", 101.0)
    if state in (RUNNING, FINISHED, FAILED, KILLED, LOST):
        task.transition(RUNNING, 102.0)
    if state in TERMINAL_STATES:
        task.transition(state, 103.0)
    assert task.state == state
    return task


def test_state_names_match_the_protobuf_enum() -> None:
    assert list(STATES) == list(cluster_pb2.TaskState.keys())
    assert TERMINAL_STATES == {FINISHED, FAILED, KILLED, LOST}
    assert ACTIVE_STATES == {STAGING, RUNNING}


def test_new_task_is_pending_with_the_callers_submit_time() -> None:
    task = new()
    assert (task.state, task.attempts, task.progress) == (PENDING, 0, 0.0)
    assert task.submitted_at == task.updated_at == 100.0
    assert task.name == "1"  # defaults to the id


def test_to_json_has_exactly_the_api_keys_and_round_trips() -> None:
    task = running()
    data = task.to_json()
    assert set(data) == API_KEYS
    assert data["state"] == "RUNNING" and data["slave_id"] == "s1" and data["attempts"] == 1
    assert TaskRecord.from_json(data) == task
    assert TaskRecord.from_json({**data, "future_column": 1}) == task


def test_launch_moves_pending_to_staging_and_counts_the_attempt() -> None:
    task = new()
    assert task.launch("s1", 101.0)
    assert (task.state, task.slave_id, task.attempts, task.updated_at) == (STAGING, "s1", 1, 101.0)
    assert not task.launch("s2", 102.0)  # only from PENDING
    assert (task.slave_id, task.attempts) == ("s1", 1)


def test_happy_path_ends_finished_with_full_progress_and_timestamps() -> None:
    task = running()
    assert task.started_at == 102.0
    assert task.set_progress(0.4, 103.0, attempt=1)
    assert task.transition(FINISHED, 104.0, attempt=1, exit_code=0)
    assert (task.state, task.progress, task.exit_code) == (FINISHED, 1.0, 0)
    assert task.finished_at == task.updated_at == 104.0


def test_pending_task_can_be_killed_without_being_launched() -> None:
    task = new()
    assert task.transition(KILLED, 101.0, message="killed by user")
    assert (task.state, task.message, task.finished_at) == (KILLED, "killed by user", 101.0)


@pytest.mark.parametrize("end", sorted(TERMINAL_STATES))
def test_staging_task_can_end_without_running(end: str) -> None:
    task = new()
    task.launch("s1", 101.0)
    assert task.transition(end, 102.0, attempt=1)
    assert task.state == end and task.started_at is None


def test_pending_task_cannot_run_or_fail_before_launch() -> None:
    task = new()
    for state in (RUNNING, FINISHED, FAILED, LOST, STAGING):
        rejection = task.check(state)
        assert rejection is not None and rejection.kind == "illegal"
        assert not task.transition(state, 101.0)
    assert task.state == PENDING


def test_late_running_after_finished_is_ignored() -> None:
    task = running()
    task.transition(FINISHED, 104.0, attempt=1, exit_code=0)
    before = task.to_json()
    rejection = task.check(RUNNING, attempt=1)
    assert rejection is not None and rejection.kind == "illegal"
    assert "FINISHED" in rejection.reason
    assert not task.transition(RUNNING, 105.0, attempt=1, progress=0.2)
    assert task.to_json() == before


def test_staging_after_running_is_rejected() -> None:
    task = running()
    assert not task.transition(STAGING, 103.0, attempt=1)
    assert task.state == RUNNING


def test_duplicate_update_is_a_noop_returning_false() -> None:
    task = running()
    task.transition(FAILED, 104.0, attempt=1, exit_code=3, message="exit 3")
    before = task.to_json()
    rejection = task.check(FAILED, attempt=1)
    assert rejection is not None and rejection.kind == "duplicate"
    assert not task.transition(FAILED, 105.0, attempt=1, exit_code=9, message="again")
    assert task.to_json() == before


@pytest.mark.parametrize("end", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("target", STATES)
def test_terminal_states_never_change_through_transition(end: str, target: str) -> None:
    task = in_state(end)
    assert not task.transition(target, 200.0)
    assert task.state == end and task.updated_at != 200.0


def test_old_attempt_update_is_ignored() -> None:
    task = running(retries=1)
    assert task.transition(LOST, 103.0)  # the master lost the slave
    assert task.requeue(104.0)
    assert task.launch("s2", 105.0) and task.attempts == 2
    # The first run's slave comes back and reports; attempt 1 is history.
    rejection = task.check(RUNNING, attempt=1)
    assert rejection is not None and rejection.kind == "stale_attempt"
    assert not task.transition(RUNNING, 106.0, attempt=1)
    assert not task.transition(FINISHED, 106.0, attempt=1)
    assert not task.set_progress(0.9, 106.0, attempt=1)
    assert (task.state, task.slave_id, task.progress) == (STAGING, "s2", 0.0)
    assert task.transition(RUNNING, 107.0, attempt=2)


def test_update_for_an_attempt_never_launched_is_ignored() -> None:
    task = running()
    assert not task.transition(FINISHED, 104.0, attempt=2)
    assert task.state == RUNNING


def test_requeue_allows_exactly_retries_extra_attempts() -> None:
    task = running(retries=1)
    assert task.retries_left == 1
    task.transition(FAILED, 103.0, attempt=1, exit_code=1)
    assert task.requeue(104.0)
    assert (task.state, task.slave_id, task.exit_code, task.progress) == (PENDING, None, None, 0.0)
    assert task.launch("s1", 105.0) and task.attempts == 2 and task.retries_left == 0
    task.transition(FAILED, 106.0, attempt=2, exit_code=1)
    assert not task.requeue(107.0)
    assert task.state == FAILED


@pytest.mark.parametrize("state", [FINISHED, KILLED, RUNNING, STAGING, PENDING])
def test_requeue_only_from_failed_or_lost(state: str) -> None:
    task = in_state(state)
    task.retries = 5
    assert not task.requeue(200.0)
    assert task.state == state


def test_progress_is_clamped_and_nan_is_dropped() -> None:
    task = running()
    assert task.set_progress(1.5, 103.0)
    assert task.progress == 1.0
    assert task.set_progress(-0.2, 104.0)
    assert task.progress == 0.0
    assert not task.set_progress(math.nan, 105.0)
    assert task.progress == 0.0 and task.updated_at == 104.0


def test_progress_may_go_down_within_an_attempt() -> None:
    task = running()
    task.set_progress(0.8, 103.0, attempt=1)
    assert task.set_progress(0.3, 104.0, attempt=1)
    assert task.progress == 0.3


@pytest.mark.parametrize("state", [PENDING, FINISHED, FAILED])
def test_progress_is_ignored_when_the_task_is_not_on_a_slave(state: str) -> None:
    task = in_state(state)
    before = task.progress
    assert not task.set_progress(0.5, 200.0)
    assert task.progress == before


def test_unknown_state_is_rejected() -> None:
    task = running()
    rejection = task.check("EXPLODED")
    assert rejection is not None and "unknown task state" in rejection.reason
    assert not task.transition("EXPLODED", 103.0)


def test_unlaunch_undoes_a_launch_that_was_never_sent() -> None:
    rec = TaskRecord.new("1", command="true", cpus=1, mem=1, now=0.0)
    assert not rec.unlaunch(1.0)  # PENDING: nothing to undo
    assert rec.launch("S1", 2.0)
    assert rec.unlaunch(3.0)
    assert (rec.state, rec.attempts, rec.slave_id, rec.updated_at) == ("PENDING", 0, None, 3.0)
    assert rec.launch("S2", 4.0) and rec.attempts == 1
