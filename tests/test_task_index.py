"""The master's lazy indexes: the PENDING queue in order and the launched tasks."""

from __future__ import annotations

from master.task_index import TaskIndex, task_key
from master.tasks import TaskRecord


def _task(tid: str, at: float, retries: int = 0) -> TaskRecord:
    return TaskRecord.new(tid, command="true", cpus=1, mem=1, now=at, retries=retries)


def test_pending_comes_back_in_submission_order_then_id_order() -> None:
    tasks = {t.id: t for t in (_task("10", 2.0), _task("9", 2.0), _task("1", 3.0),
                               _task("x", 1.0))}
    index = TaskIndex()
    for t in tasks.values():
        index.note(t)
    assert [t.id for t in index.pending(tasks)] == ["x", "9", "10", "1"]


def test_launched_tasks_leave_the_queue_and_join_the_active_set() -> None:
    tasks = {str(i): _task(str(i), float(i)) for i in range(1, 5)}
    index = TaskIndex()
    for t in tasks.values():
        index.note(t)
    assert tasks["2"].launch("s1", 10.0)
    index.note(tasks["2"])
    assert [t.id for t in index.pending(tasks)] == ["1", "3", "4"]
    assert [t.id for t in index.active(tasks)] == ["2"]
    assert tasks["2"].transition("FINISHED", 11.0, exit_code=0)
    index.note(tasks["2"])
    assert index.active(tasks) == []
    assert len(index) == 3  # the finished task is gone from both indexes


def test_a_requeued_task_goes_back_ahead_of_later_submissions() -> None:
    tasks = {t.id: t for t in (_task("1", 1.0, retries=1), _task("2", 2.0))}
    index = TaskIndex()
    for t in tasks.values():
        index.note(t)
    assert tasks["1"].launch("s1", 3.0)
    index.note(tasks["1"])
    assert [t.id for t in index.pending(tasks)] == ["2"]
    assert tasks["1"].transition("LOST", 4.0, message="slave lost")
    assert tasks["1"].requeue(4.0)
    index.note(tasks["1"])
    assert [t.id for t in index.pending(tasks)] == ["1", "2"]
    assert [t.id for t in index.active(tasks)] == []


def test_a_state_change_the_index_missed_in_between_is_still_right() -> None:
    # Launched and re-queued between two reads, noted only once: not listed twice.
    tasks = {"1": _task("1", 1.0, retries=2)}
    index = TaskIndex()
    index.note(tasks["1"])
    index.note(tasks["1"])
    assert tasks["1"].launch("s1", 2.0)
    assert tasks["1"].transition("LOST", 3.0)
    assert tasks["1"].requeue(3.0)
    index.note(tasks["1"])
    assert [t.id for t in index.pending(tasks)] == ["1"]


def test_forgotten_tasks_are_dropped() -> None:
    tasks = {"1": _task("1", 1.0)}
    index = TaskIndex()
    index.note(tasks["1"])
    del tasks["1"]
    assert index.pending(tasks) == []
    assert len(index) == 0


def test_task_key_orders_numbers_numerically_and_names_after() -> None:
    assert sorted(["b", "10", "9", "a"], key=task_key) == ["9", "10", "a", "b"]
