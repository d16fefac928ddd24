"""Positions in a listing from per-block counts: exact against a brute-force sort, through
the start-up snapshot's replay and random state changes and deletions."""

from __future__ import annotations

import random

from master.task_positions import Positions, block_of

STATES = ["PENDING", "RUNNING", "FINISHED", "KILLED"]


def _order(task_id: str) -> tuple[int, str]:
    return len(task_id), task_id  # the database's listing order


def _check(positions: Positions, tasks: dict[str, str], rng: random.Random) -> None:
    for _ in range(40):
        chosen = rng.sample(STATES, rng.randint(1, len(STATES)))
        ids = sorted((t for t, s in tasks.items() if s in chosen), key=_order)
        if not ids:
            assert positions.locate(chosen, 0) is None
            continue
        position = rng.randrange(len(ids))
        found = positions.locate(chosen, position)
        assert found is not None
        block, skip = found
        in_block = [t for t in ids if block_of(t) == block]
        assert block == block_of(ids[position])
        assert in_block[skip] == ids[position]
        assert positions.locate(chosen, len(ids)) is None  # past the end
    by_block = positions.by_block(chosen)
    assert by_block is not None
    blocks, counts, every = by_block
    assert blocks == sorted(blocks, key=lambda b: (b[0], b[1]))
    assert {block_of(t) for t in tasks} <= set(blocks)  # every block that holds a task
    assert counts == [sum(1 for t, s in tasks.items() if s in chosen and block_of(t) == b)
                      for b in blocks]
    assert every == [sum(1 for t in tasks if block_of(t) == b) for b in blocks]


def _snapshot(tasks: dict[str, str]) -> dict[tuple[str, int, str], int]:
    out: dict[tuple[str, int, str], int] = {}
    for tid, state in tasks.items():
        key = (state, *block_of(tid))
        out[key] = out.get(key, 0) + 1
    return out


def test_positions_stay_exact_through_the_snapshot_replay_and_changes() -> None:
    rng = random.Random(15)
    tasks = {str(i): rng.choice(STATES) for i in range(1, 4000) if rng.random() < 0.8}
    positions = Positions()
    assert not positions.ready and positions.locate(STATES, 0) is None
    positions.begin()  # the snapshot is queued: it will see `tasks` as they are now
    snapshot, last_id = _snapshot(tasks), 4499  # ids up to it were allocated before
    # Meanwhile: existing tasks change (their saves come after the snapshot) ...
    for tid in rng.sample(sorted(tasks), 300):
        old, tasks[tid] = tasks[tid], rng.choice(STATES)
        positions.move(tid, old, tasks[tid])
    # ... tasks created before it are noted (it counts them already), some change again ...
    for i in range(4000, 4500):
        snapshot[("PENDING", *block_of(str(i)))] = snapshot.get(
            ("PENDING", *block_of(str(i))), 0) + 1
        tasks[str(i)] = "PENDING"
        positions.move(str(i), None, "PENDING")
        if i % 3 == 0:
            tasks[str(i)] = "KILLED"
            positions.move(str(i), "PENDING", "KILLED")
    # ... and tasks created after it.
    for i in range(4500, 4600):
        tasks[str(i)] = "PENDING"
        positions.move(str(i), None, "PENDING")
    positions.load(snapshot, last_id)
    assert positions.ready
    _check(positions, tasks, rng)
    for step in range(3000):
        tid = rng.choice(sorted(tasks)) if step % 5 else str(10_000 + step)
        old = tasks.get(tid)
        if old is not None and rng.random() < 0.1:
            del tasks[tid]
            positions.move(tid, old, None)  # deleted by the retention
        else:
            tasks[tid] = rng.choice(STATES)
            positions.move(tid, old, tasks[tid])
        if step % 500 == 0:
            _check(positions, tasks, rng)
    _check(positions, tasks, rng)


def test_a_failed_snapshot_leaves_positions_unknown() -> None:
    positions = Positions()
    positions.begin()
    positions.move("1", None, "PENDING")
    positions.fail()
    positions.move("2", None, "PENDING")
    assert not positions.ready and positions.locate(["PENDING"], 0) is None
    assert positions.by_block(["PENDING"]) is None


def test_blocks_are_runs_of_a_thousand_ids_in_listing_order() -> None:
    assert block_of("7") == (1, "") and block_of("999") == (3, "")
    assert block_of("1000") == (4, "1") and block_of("123456") == (6, "123")
    ids = [str(i) for i in range(1, 30_000, 7)]
    ordered = sorted(ids, key=_order)
    assert [block_of(t) for t in ordered] == sorted(block_of(t) for t in ids)
