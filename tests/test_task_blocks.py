"""A name filter counted block by block (task_queries.block_matches), on a real SQLite file.

The database spans several blocks of ids (1–4,600: ids of lengths 1 to 3, then blocks
1000–1999 … 4000–4600), with names packed into one block, spread thin over all of them,
or absent, so that a page's window starts and ends inside, across and between blocks.
States take turns every 7 ids, except in block 3000–3999, whose tasks are all KILLED: a
block whose every task is in the states asked for is counted without comparing states.
Every page is checked against the same page cut from a plain Python sort.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from master import task_blocks as tb
from master import task_queries as tq
from master.api import PageQuery
from master.store import Store
from master.store_schema import TaskRow
from master.task_listing import _read_page
from master.task_positions import Block, Positions, block_of
from master.tasks import TaskRecord

N = 4_600
STATES = ["PENDING", "RUNNING", "FINISHED", "KILLED", "FAILED"]


def _name(i: int) -> str:
    if 2_000 <= i < 2_900:
        return f"dense-{i}"  # 900 matches, in one block
    if i % 97 == 0:
        return f"sparse-{i}"  # one in 97, in every block
    if i % 500 == 3:
        return f"été-{i}"  # non-ASCII, a few per block
    return f"other-{i}"


def _rows() -> list[dict[str, object]]:
    rows = []
    for i in range(1, N + 1):
        rec = TaskRecord.new(str(i), command="true", cpus=0.1, mem=1, now=1.0, name=_name(i))
        rec.state = "KILLED" if 3_000 <= i < 4_000 else STATES[(i // 7) % len(STATES)]
        rows.append(rec.to_json())
    return rows


ROWS = _rows()


def _positions(rows: list[dict[str, object]]) -> Positions:
    snapshot: dict[tuple[str, int, str], int] = {}
    for r in rows:
        length, prefix = block_of(str(r["id"]))
        key = (str(r["state"]), length, prefix)
        snapshot[key] = snapshot.get(key, 0) + 1
    positions = Positions()
    positions.begin()
    positions.load(snapshot, len(rows))
    return positions


def _counts(states: frozenset[str] | None) -> tb.BlockCounts:
    """The master's counts behind a name page in ``states``."""
    chosen = [s for s in STATES + ["STAGING", "LOST"] if states is None or s in states]
    found = _positions(ROWS).by_block(chosen)
    assert found is not None
    return tb.BlockCounts(*found)


BLOCKS = _counts(None).blocks


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("blocks") / "master.db"
    Store.open(str(path)).close_blocking()  # the schema and its indexes, as a master makes them
    engine = sa.create_engine(f"sqlite:///{path}")
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(TaskRow), ROWS)
    yield engine
    engine.dispose()


def _matches(states: frozenset[str] | None, name: str) -> list[dict[str, object]]:
    return [r for r in ROWS if (states is None or r["state"] in states)
            and str(r["name"]).startswith(name)]


def _expected(q: PageQuery) -> tuple[int, list[str]]:
    assert q.name is not None
    ids = sorted((str(r["id"]) for r in _matches(q.states, q.name)),
                 key=lambda i: (len(i), i), reverse=q.order == "desc")
    return len(ids), ids[q.offset:q.offset + q.limit]


FILTERS = [(None, "dense-"), (None, "sparse-"), (frozenset({"KILLED"}), "sparse-"),
           (frozenset({"KILLED", "PENDING"}), "dense-2"), (None, "été-"), (None, "o"),
           (None, "nothing"), (frozenset({"LOST"}), "dense-")]


def test_block_window_holds_exactly_the_window() -> None:
    assert tb.block_window([0, 3, 0, 5, 2], 0, 1) == (1, 2, 0)
    assert tb.block_window([0, 3, 0, 5, 2], 2, 2) == (1, 4, 2)  # across an empty block
    assert tb.block_window([0, 3, 0, 5, 2], 3, 5) == (3, 4, 0)  # one whole block
    assert tb.block_window([0, 3, 0, 5, 2], 9, 1) == (4, 5, 1)
    for counts in ([1], [4, 0, 0, 1], [0, 2, 3, 0, 1, 7], [1, 1, 1, 1]):
        flat = [b for b, n in enumerate(counts) for _ in range(n)]  # each match's block
        for start, limit in itertools.product(range(len(flat)), range(1, len(flat) + 1)):
            if start + limit > len(flat):
                continue
            first, stop, skip = tb.block_window(counts, start, limit)
            assert first == flat[start] and stop == flat[start + limit - 1] + 1
            assert skip == start - flat.index(first)


@pytest.mark.parametrize(("states", "name"), FILTERS)
def test_block_matches_counts_each_blocks_matches(db: sa.Engine, states: frozenset[str] | None,
                                                 name: str) -> None:
    want = {b: 0 for b in BLOCKS}
    for r in _matches(states, name):
        want[block_of(str(r["id"]))] += 1
    extra: list[Block] = [(4, "9"), (5, "12")]  # blocks the master knows, empty in the file
    held, whole = _counts(states).held()
    with Session(db) as session:
        got = tb.block_matches(session, BLOCKS + extra, states, name)
        flagged = tb.block_matches(session, held, states, name, whole)
    assert got == [want[b] for b in BLOCKS] + [0, 0]
    assert flagged == [want[b] for b in held]


def test_only_the_blocks_with_every_task_in_the_states_skip_the_state() -> None:
    held, whole = _counts(frozenset({"KILLED"})).held()
    assert [b for b, w in zip(held, whole) if w] == [(4, "3")]
    assert held == [b for b in BLOCKS  # every block holding a KILLED task, in order
                    if any(r["state"] == "KILLED" and block_of(str(r["id"])) == b for r in ROWS)]
    assert all(_counts(None).held()[1])
    held, whole = _counts(frozenset({"LOST"})).held()
    assert held == [] and whole == []


@pytest.mark.parametrize(("states", "name"), FILTERS)
def test_pages_counted_by_block_match_a_plain_sort(db: sa.Engine, states: frozenset[str] | None,
                                                   name: str) -> None:
    counts = _counts(states)
    total = len(_matches(states, name))
    offsets = sorted({0, 1, 5, 99, 100, total // 2, total - 101, total - 1, total, total + 3}
                     | set(range(0, total, max(1, total // 9))))
    with Session(db) as session:
        for order, limit in itertools.product(("asc", "desc"), (1, 7, 100, 1_500)):
            for offset in (o for o in offsets if o >= 0):
                q = PageQuery(limit=limit, offset=offset, states=states, name=name,
                              order=order)
                want_total, want = _expected(q)
                got_total, records = tb.block_page(session, q, name, counts)
                assert got_total == want_total
                assert [r.id for r in records] == want, (q, want_total)


@pytest.mark.parametrize(("small", "few_outside", "edge"),
                         [(50, 2_000, 0), (50, 2_000, 1_500), (50, 4_700, 0), (10**6, 1, 0)],
                         ids=["by-block", "edge-walk", "complement", "by-state"])
@pytest.mark.parametrize(("states", "name"), FILTERS)
def test_the_listing_read_with_blocks_matches_a_plain_sort(
        db: sa.Engine, states: frozenset[str] | None, name: str, small: int,
        few_outside: int, edge: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing's own read, given the master's blocks: counted block by block, found by
    a short walk from its end, as each block's tasks less those without the name, or
    (states that hold few tasks) sought by state and sorted."""
    monkeypatch.setattr(tq, "SMALL_MATCH", small)
    monkeypatch.setattr(tq, "FEW_OUTSIDE", few_outside)
    monkeypatch.setattr(tq, "EDGE_WALK", edge)
    in_states = sum(1 for r in ROWS if states is None or r["state"] in states)
    counts = _counts(states)
    with Session(db) as session:
        for order, offset in itertools.product(("asc", "desc"), range(0, 1_000, 37)):
            q = PageQuery(limit=40, offset=offset, states=states, name=name, order=order)
            want_total, want = _expected(q)
            got_total, records = _read_page(session, q, in_states, None, counts)
            assert got_total == want_total
            assert [r.id for r in records] == want, (q, want_total)


@pytest.mark.parametrize(("states", "name"), FILTERS)
def test_a_walk_from_the_end_finds_a_page_only_within_its_bound(
        db: sa.Engine, states: frozenset[str] | None, name: str) -> None:
    with Session(db) as session:
        for order, bound, offset in itertools.product(("asc", "desc"), (100, 1_000, 10**6),
                                                      (0, 3, 40)):
            q = PageQuery(limit=7, offset=offset, states=states, name=name, order=order)
            walked = sorted(ROWS, key=lambda r: int(str(r["id"])),
                            reverse=order == "desc")[:bound]
            near = [str(r["id"]) for r in walked if (states is None or r["state"] in states)
                    and str(r["name"]).startswith(name)]
            want = near[offset:offset + 7] if len(near) >= offset + 7 else None
            assert tq.edge_ids(session, q, bound) == want, (q, bound)


def test_the_block_count_seeks_each_block_on_its_covering_index(db: sa.Engine) -> None:
    with Session(db) as session:
        named = tq.filter_terms(session, None, "sparse-", index="name")
        for states, value, mode, whole in (
                (None, sa.func.count(), "none", None),
                (frozenset({"KILLED", "PENDING"}),
                 sa.func.group_concat(TaskRow.__table__.c.id), "none", None),
                (frozenset({"KILLED"}), sa.func.count(), "some",
                 _counts(frozenset({"KILLED"})).held()[1]),
                (frozenset({"KILLED"}), sa.func.count(), "all", [True] * len(BLOCKS))):
            stmt = tb.per_block_statement(
                value, [tq.filter_terms(session, states, "sparse-", index="name")],
                [named], mode).params(blocks=tb.block_rows(BLOCKS, whole))
            sql = str(stmt.compile(db, compile_kwargs={"literal_binds": True}))
            raw = db.raw_connection()
            try:
                plan = " | ".join(str(r[-1]) for r in
                                  raw.cursor().execute(f"EXPLAIN QUERY PLAN {sql}"))
            finally:
                raw.close()
            assert "SEARCH tasks USING COVERING INDEX ix_tasks_block_name" in plan, plan
            assert "SCAN tasks" not in plan, plan


def test_a_database_made_before_the_block_index_gets_it_at_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store.open(str(path)).close_blocking()
    engine = sa.create_engine(f"sqlite:///{path}")
    with Session(engine) as session, session.begin():
        session.execute(sa.text("DROP INDEX ix_tasks_block_name"))
        session.execute(sa.insert(TaskRow), ROWS[:1_500])

    def indexes() -> set[str]:
        with Session(engine) as session:
            return {str(n) for n in session.scalars(sa.text(
                "SELECT name FROM sqlite_master WHERE type = 'index'"))}

    assert "ix_tasks_block_name" not in indexes()
    Store.open(str(path)).close_blocking()
    assert "ix_tasks_block_name" in indexes()
    with Session(engine) as session:
        assert sum(tb.block_matches(session, BLOCKS, None, "sparse-")) == sum(
            1 for r in ROWS[:1_500] if str(r["name"]).startswith("sparse-"))
    engine.dispose()


def _brute_block_counts(rows: list[dict[str, object]]) -> dict[tuple[str, int, str], int]:
    out: dict[tuple[str, int, str], int] = {}
    for r in rows:
        key = (str(r["state"]), *block_of(str(r["id"])))
        out[key] = out.get(key, 0) + 1
    return out


def test_the_start_up_snapshot_counts_every_block_and_state(db: sa.Engine) -> None:
    with Session(db) as session:
        counts, _ = tq.block_counts(session)
    assert counts == _brute_block_counts(ROWS)


def test_the_start_up_snapshot_holds_odd_ids_too(tmp_path: Path) -> None:
    """Ids the master would not make (letters, non-ASCII, the highest code point, lengths
    1 to 9, gaps) and an empty table: the same counts as a plain count by block."""
    path = tmp_path / "odd.db"
    Store.open(str(path)).close_blocking()
    engine = sa.create_engine(f"sqlite:///{path}")
    top = "\U0010ffff"
    ids = ["7", "42", "999", "1000", "1999", "2000", "10000", "123456789", "abc",
           "ab" + top * 3, "ab" + top, "é" * 4, "éé" + top * 2, top * 4, top * 3 + "a",
           "12" + top + "45", "1234", "1233", "9999", "00000"]
    rows = []
    for i, tid in enumerate(ids):
        rec = TaskRecord.new(tid, command="true", cpus=0.1, mem=1, now=1.0, name="x")
        rec.state = STATES[i % len(STATES)]
        rows.append(rec.to_json())
    try:
        with Session(engine) as session:
            assert tq.block_counts(session)[0] == {}
        with Session(engine) as session, session.begin():
            session.execute(sa.insert(TaskRow), rows)
        with Session(engine) as session:
            assert tq.block_counts(session)[0] == _brute_block_counts(rows)
    finally:
        engine.dispose()
