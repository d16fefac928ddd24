"""The pure attempt history, usage checks and retry backoff (master/attempts.py)."""

from __future__ import annotations

import json
import math

import pytest

from master.attempts import (
    MAX_CPU_SECONDS,
    RETRY_DELAY_CAP,
    Attempt,
    AttemptLog,
    Usage,
    backoff,
    clean_usage,
    detail_json,
    retry_at,
    view,
)
from master.tasks import FAILED, FINISHED, KILLED, LOST, RUNNING, TaskRecord
from protos import cluster_pb2 as pb


def new(tid: str = "1", retries: int = 2, retry_delay: float = 1.0) -> TaskRecord:
    return TaskRecord.new(tid, command="exit 1", cpus=1, mem=64, now=100.0, retries=retries,
                          retry_delay=retry_delay)


def usage_pb(**fields: object) -> pb.ResourceUsage:
    base: dict[str, object] = {"cpu_seconds": 1.5, "mem_mib": 10.0, "mem_peak_mib": 12.0,
                               "source": "cgroups v1", "timestamp": 1.7e9}
    base.update(fields)
    return pb.ResourceUsage(**{k: v for k, v in base.items() if v is not None})


def run_and_fail(log: AttemptLog, rec: TaskRecord, slave: str, now: float,
                 code: int = 1) -> bool:
    """Launch, run and fail one attempt the way the master does; True when re-queued."""
    assert rec.launch(slave, now)
    log.observe(rec)
    assert rec.transition(RUNNING, now + 1, attempt=rec.attempts)
    log.observe(rec)
    assert rec.transition(FAILED, now + 2, attempt=rec.attempts, exit_code=code,
                          message=f"exited with code {code}")
    log.observe(rec)  # what TaskAttempts.requeue does before requeue()
    requeued = rec.requeue(now + 2)
    log.observe(rec)  # what the master's save does after
    return requeued


# -- usage ---------------------------------------------------------------------------------


def test_believable_usage_is_kept_with_its_source() -> None:
    u = clean_usage(usage_pb())
    assert u == Usage(1.5, 10.0, 12.0, "cgroups v1", 1.7e9)
    assert u.to_json() == {"cpu_seconds": 1.5, "mem_mib": 10.0, "mem_peak_mib": 12.0,
                           "source": "cgroups v1", "timestamp": 1.7e9}


@pytest.mark.parametrize("bad", [
    {"cpu_seconds": math.nan}, {"cpu_seconds": math.inf}, {"cpu_seconds": -1.0},
    {"cpu_seconds": MAX_CPU_SECONDS * 10}, {"mem_mib": math.nan}, {"mem_mib": -0.5},
    {"mem_mib": 1e300}, {"mem_peak_mib": math.inf}, {"cpu_seconds": None},
    {"mem_mib": None},
])
def test_unbelievable_usage_is_dropped_whole(bad: dict[str, object]) -> None:
    assert clean_usage(usage_pb(**bad)) is None


def test_usage_oddities_are_made_safe_not_refused() -> None:
    u = clean_usage(usage_pb(source="x" * 10_000, mem_peak_mib=1.0, timestamp=math.nan))
    assert u is not None
    assert u.source == "unknown"  # an unknown string is never echoed
    assert u.mem_peak_mib == u.mem_mib == 10.0  # the peak is at least what is used now
    assert u.timestamp is None
    assert clean_usage(usage_pb(mem_peak_mib=None)).mem_peak_mib == 10.0  # type: ignore[union-attr]


# -- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(1.0, n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(0.5, 1) == 0.5 and backoff(0.5, 3) == 2.0
    assert backoff(1.0, 10_000) == RETRY_DELAY_CAP  # no overflow however many attempts


def test_backoff_edge_cases() -> None:
    assert backoff(0.0, 3) == 0.0  # no delay asked for
    assert backoff(1.0, 0) == 0.0  # nothing ended yet
    assert backoff(600.0, 1) == backoff(600.0, 5) == 600.0  # a delay above the cap stays
    assert backoff(None, 2) == 2.0 and backoff(math.nan, 1) == 1.0  # old rows: the default


def test_retry_at_is_the_last_attempts_end_plus_the_backoff() -> None:
    log = AttemptLog()
    rec = new(retry_delay=1.5)
    assert run_and_fail(log, rec, "s1", 200.0)
    assert retry_at(rec, log.last_ended("1")) == 202.0 + 1.5
    assert run_and_fail(log, rec, "s2", 300.0)
    assert retry_at(rec, log.last_ended("1")) == 302.0 + 3.0
    assert retry_at(new(), None) is None  # never launched
    no_wait = new(tid="2", retry_delay=0)
    assert run_and_fail(log, no_wait, "s1", 400.0)
    assert retry_at(no_wait, log.last_ended(no_wait.id)) is None


# -- the log -------------------------------------------------------------------------------


def test_every_attempt_is_kept_with_its_slave_times_and_exit_code() -> None:
    log = AttemptLog()
    rec = new(retries=2)
    assert run_and_fail(log, rec, "s1", 100.0, code=1)
    assert run_and_fail(log, rec, "s2", 110.0, code=2)
    assert not run_and_fail(log, rec, "s1", 120.0, code=3)  # no retry left: FAILED for good
    assert rec.state == FAILED
    history = log.history(rec)
    assert history is not None
    shown = [(a.number, a.slave_id, a.state, a.exit_code, a.launched_at, a.started_at,
              a.finished_at) for a in history]
    assert shown == [(1, "s1", FAILED, 1, 100.0, 101.0, 102.0),
                     (2, "s2", FAILED, 2, 110.0, 111.0, 112.0),
                     (3, "s1", FAILED, 3, 120.0, 121.0, 122.0)]
    assert history[1].message == "exited with code 2"


def test_rows_are_the_ended_attempts_until_confirmed() -> None:
    log = AttemptLog()
    rec = new()
    assert rec.launch("s1", 100.0)
    log.observe(rec)
    assert log.rows(rec) == []  # a running attempt is carried by the task row itself
    assert rec.transition(FAILED, 101.0, attempt=1, exit_code=1)
    log.observe(rec)
    assert rec.requeue(101.0)
    log.observe(rec)
    rows = log.rows(rec)
    assert [(r["number"], r["state"], r["exit_code"]) for r in rows] == [(1, FAILED, 1)]
    assert log.rows(rec) == rows  # a save that failed: the re-save carries them again
    log.confirm("1", rows)
    assert log.rows(rec) == []
    assert rec.launch("s2", 103.0)
    log.observe(rec)
    assert rec.transition(FINISHED, 104.0, attempt=2, exit_code=0)
    log.observe(rec)
    assert [r["number"] for r in log.rows(rec)] == [2]


def test_usage_goes_to_the_current_attempt_only() -> None:
    log = AttemptLog()
    rec = new()
    assert rec.launch("s1", 100.0)
    log.observe(rec)
    sample = Usage(1.0, 5.0, 6.0, "proc")
    assert log.sample(rec, 1, sample)
    assert not log.sample(rec, 2, Usage(9.0, 9.0, 9.0, "proc"))  # not launched: stale
    assert rec.transition(FAILED, 101.0, attempt=1, exit_code=1)
    final = Usage(2.0, 0.0, 7.0, "proc")
    assert log.sample(rec, 1, final)  # the terminal update's figures, before requeue
    log.observe(rec)
    assert rec.requeue(101.0)
    log.observe(rec)
    assert not log.sample(rec, 1, Usage(99.0, 1.0, 1.0, "proc"))  # re-queued: attempt over
    [row] = log.rows(rec)
    assert (row["cpu_seconds"], row["mem_peak_mib"], row["usage_source"]) == (2.0, 7.0, "proc")
    assert Attempt.from_row(row).usage == final


def test_a_launch_taken_back_leaves_no_attempt() -> None:
    log = AttemptLog()
    rec = new()
    assert rec.launch("s1", 100.0)
    log.observe(rec)
    assert rec.unlaunch(100.5)
    log.observe(rec)
    assert log.history(rec) == []
    assert rec.launch("s2", 101.0)
    log.observe(rec)
    assert [(a.number, a.slave_id) for a in log.history(rec) or []] == [(1, "s2")]


def test_a_task_killed_while_waiting_for_its_retry_keeps_its_last_attempt() -> None:
    log = AttemptLog()
    rec = new()
    assert run_and_fail(log, rec, "s1", 100.0)
    assert rec.transition(KILLED, 103.0, message="killed by user before it started")
    log.observe(rec)
    [attempt] = log.history(rec) or []
    assert (attempt.state, attempt.exit_code, attempt.slave_id) == (FAILED, 1, "s1")


def test_the_view_follows_the_record_even_when_it_was_put_back() -> None:
    # A kill whose save failed puts the record back as it was, without a save.
    log = AttemptLog()
    rec = new()
    assert rec.launch("s1", 100.0)
    assert rec.transition(RUNNING, 101.0, attempt=1)
    log.observe(rec)
    before = TaskRecord(**rec.to_json())
    assert rec.transition(KILLED, 102.0, message="killed by user; its slave was gone")
    log.observe(rec)
    for name, value in before.to_json().items():
        setattr(rec, name, value)
    [attempt] = log.history(rec) or []
    assert (attempt.state, attempt.finished_at) == (RUNNING, None)


def test_view_merges_stored_rows_with_the_live_record() -> None:
    rec = new()
    for _ in range(2):
        assert rec.launch("s1", 100.0)
        assert rec.transition(LOST, 101.0, message="slave lost")
        assert rec.requeue(101.0)
    assert rec.launch("s3", 105.0)
    assert rec.transition(RUNNING, 106.0, attempt=3)
    stored = [Attempt("1", n, "s1", state=LOST, finished_at=101.0) for n in (1, 2)]
    stored.append(Attempt("1", 9, "ghost", state=FAILED))  # past the record's count: not shown
    shown = view(rec, stored)
    assert [(a.number, a.slave_id, a.state) for a in shown] == [
        (1, "s1", LOST), (2, "s1", LOST), (3, "s3", RUNNING)]
    assert stored[0].state == LOST  # copies: the input is untouched


def test_final_histories_are_bounded_and_kept_longer_until_durable() -> None:
    log = AttemptLog(keep_ended=3)
    recs = []
    for i in range(10):
        rec = new(str(i), retries=0)
        assert rec.launch("s1", 100.0)
        log.observe(rec)
        assert rec.transition(FINISHED, 101.0, attempt=1, exit_code=0)
        log.observe(rec)
        recs.append(rec)
    assert len(log) == 6  # nothing durable yet: kept past the bound, up to twice it
    for rec in recs:
        log.confirm(rec.id, log.rows(rec))
    extra = new("x", retries=0)
    assert extra.launch("s1", 100.0)
    log.observe(extra)
    assert extra.transition(FINISHED, 101.0, attempt=1, exit_code=0)
    log.observe(extra)
    assert len(log) == 3  # the durable ones past the bound are gone
    log.confirm("x", log.rows(extra))
    for i in range(5):  # each final task pushes the oldest durable one out
        rec = new(f"y{i}", retries=0)
        assert rec.launch("s1", 100.0)
        assert rec.transition(FINISHED, 101.0, attempt=1, exit_code=0)
        log.observe(rec)
        log.confirm(rec.id, log.rows(rec))
    assert len(log) == 3
    assert log.history(recs[0]) is None  # forgotten: read it from the database
    assert log.history(new("never")) == []


def test_a_history_read_from_the_database_is_remembered() -> None:
    first = AttemptLog()
    rec = new(retries=0)
    assert not run_and_fail(first, rec, "s1", 100.0)
    rows = first.rows(rec)
    later = AttemptLog()
    assert later.history(rec) is None  # not in memory: the caller reads the database
    later.remember(rec, rows)
    [attempt] = later.history(rec) or []
    assert (attempt.slave_id, attempt.exit_code, attempt.launched_at) == ("s1", 1, 100.0)
    assert later.rows(rec) == []  # nothing to write back
    live = new("2")
    assert live.launch("s1", 100.0)
    later.remember(live, [{**rows[0], "task_id": "2"}])  # only final tasks: a live one's
    assert later.history(live) is None  # history is the master's own, from its record


def test_recover_rebuilds_a_waiting_task_from_its_rows() -> None:
    first = AttemptLog()
    rec = new()
    assert run_and_fail(first, rec, "s1", 100.0)
    rows = first.rows(rec)
    second = AttemptLog()
    second.recover(TaskRecord(**rec.to_json()), rows)
    assert second.rows(rec) == []  # they came from the database: already durable
    last = second.last_ended("1")
    assert last is not None and (last.slave_id, last.exit_code) == ("s1", 1)
    assert retry_at(rec, last) == 103.0


def test_detail_json_shape_has_no_nan_and_says_why_it_waits() -> None:
    log = AttemptLog()
    rec = new()
    assert run_and_fail(log, rec, "s1", 100.0)
    history = log.history(rec) or []
    data = detail_json(rec, history, held_until=103.0, now=102.5)
    json.dumps(data, allow_nan=False)
    assert data["state"] == "PENDING" and data["attempt"] == 1
    assert [a["attempt"] for a in data["attempts"]] == [1]
    assert set(data["attempts"][0]) == {"attempt", "slave_id", "state", "launched_at",
                                        "started_at", "finished_at", "exit_code", "message",
                                        "usage"}
    assert data["retry_at"] == 103.0
    assert data["pending_reason"].startswith("retry backoff: attempt 2 of 3 starts in 0.5s")
    assert "attempt 1 FAILED (exit code 1)" in data["pending_reason"]
    later = detail_json(rec, history, held_until=103.0, now=104.0)
    assert later["retry_at"] is None and later["pending_reason"] is None
    assert data["usage"] is None
