"""The pure scheduler: FIFO + first fit, and the submit-time "can never fit" check."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from master.scheduler import (
    Assignment,
    FreeResources,
    PendingTask,
    fits_any,
    schedule,
    too_big_message,
)
from master.tasks import TaskRecord
from protos import cluster_pb2


def placed(assignments: list[Assignment]) -> list[tuple[str, str]]:
    return [(a.task_id, a.slave_id) for a in assignments]


def test_first_fit_places_tasks_in_fifo_order() -> None:
    pending = [PendingTask("1", 2, 512), PendingTask("2", 1, 256), PendingTask("3", 2, 512)]
    slaves = [FreeResources("s1", 3, 1024), FreeResources("s2", 4, 4096)]
    # "1" takes 2 of s1's 3 cpus, "2" the last one, "3" no longer fits s1 and goes to s2.
    assert placed(schedule(pending, slaves)) == [("1", "s1"), ("2", "s1"), ("3", "s2")]


def test_free_resources_shrink_as_tasks_are_placed() -> None:
    pending = [PendingTask(str(i), 1, 100) for i in range(6)]
    result = schedule(pending, [FreeResources("s1", 4, 1000)])
    assert placed(result) == [("0", "s1"), ("1", "s1"), ("2", "s1"), ("3", "s1")]


def test_memory_limits_placement_as_well_as_cpus() -> None:
    pending = [PendingTask("1", 1, 600), PendingTask("2", 1, 600)]
    result = schedule(pending, [FreeResources("s1", 8, 1000), FreeResources("s2", 8, 700)])
    assert placed(result) == [("1", "s1"), ("2", "s2")]


def test_task_that_fits_nowhere_now_does_not_block_smaller_tasks_by_default() -> None:
    pending = [PendingTask("big", 4, 100), PendingTask("small", 1, 100)]
    assert placed(schedule(pending, [FreeResources("s1", 2, 1000)])) == [("small", "s1")]


def test_strict_fifo_stops_at_the_first_task_that_does_not_fit() -> None:
    pending = [PendingTask("a", 1, 100), PendingTask("big", 4, 100), PendingTask("c", 1, 100)]
    result = schedule(pending, [FreeResources("s1", 2, 1000)], strict_fifo=True)
    assert placed(result) == [("a", "s1")]


def test_float_tolerance_lets_tenths_of_a_cpu_fill_a_slave() -> None:
    pending = [PendingTask(str(i), 0.1, 0.1) for i in range(3)]
    result = schedule(pending, [FreeResources("s1", 0.3, 0.3)])
    assert len(result) == 3


def test_inputs_are_not_modified_and_assignments_carry_the_demand() -> None:
    slaves = [FreeResources("s1", 2, 100)]
    result = schedule([PendingTask("1", 2, 100)], slaves)
    assert result == [Assignment("1", "s1", 2, 100)]
    assert slaves == [FreeResources("s1", 2, 100)]
    # A second call with the same (unchanged) free resources places it again.
    assert schedule([PendingTask("1", 2, 100)], slaves) == result


def test_no_slaves_or_no_tasks_gives_no_assignments() -> None:
    assert schedule([PendingTask("1", 1, 1)], []) == []
    assert schedule([], [FreeResources("s1", 1, 1)]) == []


def test_task_records_can_be_scheduled_directly() -> None:
    record = TaskRecord.new("7", command="true", cpus=1, mem=64, now=0.0)
    assert placed(schedule([record], [FreeResources("s1", 1, 64)])) == [("7", "s1")]


def test_fits_any_checks_total_resources_of_every_slave() -> None:
    totals = [FreeResources("s1", 2, 4096), FreeResources("s2", 8, 512)]
    assert fits_any(8, 512, totals)
    assert fits_any(2, 4096, totals)
    assert not fits_any(8, 4096, totals)  # no single slave has both
    assert not fits_any(1, 1, [])


def test_fits_any_accepts_protobuf_resources() -> None:
    totals = [cluster_pb2.Resources(cpus=4, mem=2048)]
    assert fits_any(4, 2048, totals)
    assert not fits_any(4.5, 2048, totals)


def test_task_too_big_for_any_slave_is_rejected_with_clear_message() -> None:
    totals = [FreeResources("s1", 2, 1024), FreeResources("s2", 4, 2048)]
    assert not fits_any(8, 100, totals)
    message = too_big_message(8, 100, totals)
    assert message.startswith(
        "task needs 8 cpus / 100 MiB but the largest slave has 4 cpus / 2048 MiB"
    )


def test_too_big_message_names_the_biggest_memory_slave_when_it_differs() -> None:
    totals = [FreeResources("s1", 8, 512), FreeResources("s2", 1, 8192)]
    message = too_big_message(2, 4096, totals)
    assert "largest slave has 8 cpus / 512 MiB" in message
    assert "most memory has 1 cpus / 8192 MiB" in message


def test_too_big_message_without_slaves_says_to_start_one() -> None:
    assert "no slave is registered" in too_big_message(0.5, 64, [])


def test_spread_places_each_task_on_the_slave_with_most_free_cpus() -> None:
    slaves = [FreeResources("s1", 4, 4096), FreeResources("s2", 4, 4096),
              FreeResources("s3", 2, 4096)]
    tasks = [PendingTask(str(i), 1, 10) for i in range(6)]
    placed = [a.slave_id for a in schedule(tasks, slaves, spread=True)]
    assert placed == ["s1", "s2", "s1", "s2", "s1", "s2"]  # ties: list order
    first_fit = [a.slave_id for a in schedule(tasks, slaves)]
    assert first_fit == ["s1", "s1", "s1", "s1", "s2", "s2"]


def test_spread_still_respects_memory_and_fifo() -> None:
    slaves = [FreeResources("big-cpu", 8, 100), FreeResources("big-mem", 2, 4096)]
    placed = schedule([PendingTask("a", 1, 1000), PendingTask("b", 1, 50)], slaves, spread=True)
    assert [(a.task_id, a.slave_id) for a in placed] == [("a", "big-mem"), ("b", "big-cpu")]


def _reference_schedule(pending: list[PendingTask], slaves: list[FreeResources],
                        spread: bool, avoid: dict[str, str] | None = None
                        ) -> list[tuple[str, str]]:
    """The placement rule written the slow, obvious way (no shortcuts), to compare against."""
    free = {s.slave_id: [s.cpus, s.mem] for s in slaves}
    out = []
    for t in pending:
        fitting = [s.slave_id for s in slaves
                   if t.cpus <= free[s.slave_id][0] + 1e-9 and t.mem <= free[s.slave_id][1] + 1e-9]
        if not fitting:
            continue
        others = [sid for sid in fitting if sid != (avoid or {}).get(t.id)]
        fitting = others or fitting  # the avoided slave only when no other has room
        chosen = fitting[0]
        if spread:
            for sid in fitting:
                if free[sid][0] > free[chosen][0] + 1e-9:
                    chosen = sid
        free[chosen][0] = max(0.0, free[chosen][0] - t.cpus)
        free[chosen][1] = max(0.0, free[chosen][1] - t.mem)
        out.append((t.id, chosen))
    return out


@given(
    demands=st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]),
                               st.sampled_from([0.0, 64.0, 256.0, 1024.0])), max_size=40),
    slaves=st.lists(st.tuples(st.sampled_from([0.0, 0.3, 1.0, 2.0, 4.0]),
                              st.sampled_from([0.0, 128.0, 512.0, 2048.0])),
                    min_size=1, max_size=4),
    spread=st.booleans(),
    avoided=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 4)), max_size=20),
)
def test_skipping_demands_that_already_failed_changes_no_placement(
        demands: list[tuple[float, float]], slaves: list[tuple[float, float]],
        spread: bool, avoided: list[tuple[int, int]]) -> None:
    pending = [PendingTask(str(i), c, m) for i, (c, m) in enumerate(demands)]
    free = [FreeResources(f"s{i}", c, m) for i, (c, m) in enumerate(slaves)]
    avoid = {str(t): f"s{s}" for t, s in avoided}  # some name no slave, which is harmless
    assert placed(schedule(pending, free, spread=spread)) == _reference_schedule(
        pending, free, spread)
    assert placed(schedule(pending, free, spread=spread, avoid=avoid)) == _reference_schedule(
        pending, free, spread, avoid)


def test_a_retried_task_goes_to_another_slave_when_one_has_room() -> None:
    slaves = [FreeResources("s1", 4, 4096), FreeResources("s2", 1, 4096)]
    retried = [PendingTask("7", 1, 64)]
    assert placed(schedule(retried, slaves, spread=True)) == [("7", "s1")]
    assert placed(schedule(retried, slaves, spread=True, avoid={"7": "s1"})) == [("7", "s2")]
    assert placed(schedule(retried, slaves, avoid={"7": "s1"})) == [("7", "s2")]  # first fit


def test_a_retried_task_goes_back_to_its_slave_when_no_other_has_room() -> None:
    slaves = [FreeResources("s1", 4, 4096), FreeResources("s2", 0.5, 4096)]
    pending = [PendingTask("7", 1, 64), PendingTask("8", 0.5, 64)]
    # "7" fits only on s1, the one it failed on: placed there rather than left waiting.
    result = schedule(pending, slaves, spread=True, avoid={"7": "s1", "8": "s2"})
    assert placed(result) == [("7", "s1"), ("8", "s1")]


def test_a_long_queue_of_tasks_that_cannot_fit_is_skipped_cheaply() -> None:
    # 50,000 identical tasks behind a full cluster: one failed fit, then set lookups.
    pending = [PendingTask(str(i), 1, 100) for i in range(50_000)]
    pending.append(PendingTask("small", 0.1, 10))
    result = schedule(pending, [FreeResources("s1", 0.5, 1000)] * 200)
    assert placed(result) == [("small", "s1")]
