"""The master's listing, count and retention queries on a real SQLite file.

Every page shape (filters, both orders, every offset, front and back half) is checked against
the same page cut from a plain Python sort, and every query plan against SQLite's own
EXPLAIN QUERY PLAN: a listing never scans the table, and the big-match plans walk covering
indexes.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from master import task_blocks as tb
from master import task_queries as tq
from master.api import PageQuery
from master.store import Store
from master.store_schema import TaskRow
from master.task_positions import Positions, block_of
from master.tasks import TaskRecord

STATES = ["PENDING", "RUNNING", "FINISHED", "KILLED", "FAILED"]


def _rows(n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(1, n + 1):
        rec = TaskRecord.new(str(i), command="true", cpus=0.1, mem=1, now=1000.0 + i,
                             name=("build-" if i % 3 else "test-") + str(i))
        rec.state = STATES[i % len(STATES)]
        if rec.state in ("FINISHED", "KILLED", "FAILED"):
            rec.finished_at = 2000.0 + i
        rows.append(rec.to_json())
    return rows


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("queries") / "master.db"
    Store.open(str(path)).close_blocking()  # the schema and its indexes, as a master makes them
    engine = sa.create_engine(f"sqlite:///{path}")
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(TaskRow), _rows(157))
    yield engine
    engine.dispose()


def _expected(q: PageQuery) -> tuple[int, list[str]]:
    matches = [r for r in _rows(157) if (q.states is None or r["state"] in q.states)
               and (q.name is None or str(r["name"]).startswith(q.name))]
    ids = [str(r["id"]) for r in sorted(matches, key=lambda r: int(str(r["id"])),
                                        reverse=q.order == "desc")]
    return len(ids), ids[q.offset:q.offset + q.limit]


FILTERS = [(None, None), (frozenset({"KILLED"}), None), (frozenset({"KILLED", "PENDING"}), None),
           (None, "build-"), (frozenset({"FINISHED"}), "test-"), (None, "build-1"),
           (None, "nothing"), (frozenset({"LOST"}), None)]


def _in_states(states: frozenset[str] | None) -> int:
    return sum(1 for r in _rows(157) if states is None or r["state"] in states)


@pytest.mark.parametrize("counts", [True, False], ids=["state-counts", "no-counts"])
@pytest.mark.parametrize("small", [1_000_000, 5], ids=["sorted", "walked"])
@pytest.mark.parametrize(("states", "name"), FILTERS)
def test_every_page_matches_a_plain_sort(db: sa.Engine, states: frozenset[str] | None,
                                         name: str | None, small: int, counts: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan — sorted or walked, on the name, state or id-order index, chosen with
    or without the master's counts by state — cuts the same pages as a plain sort."""
    monkeypatch.setattr(tq, "SMALL_MATCH", small)  # both plans for filtered pages
    in_states = _in_states(states) if counts else None
    with Session(db) as session:
        for order in ("asc", "desc"):
            for limit in (1, 7, 50):
                for offset in range(0, 170, 9):
                    q = PageQuery(limit=limit, offset=offset, states=states, name=name,
                                  order=order)
                    total, want = _expected(q)
                    known = total if name is None else None  # the master's counts
                    got_total, records = tq.page(session, q, known, in_states=in_states)
                    assert got_total == total
                    assert [r.id for r in records] == want, (q, total)


def _plan(engine: sa.Engine, q: PageQuery, total: int, in_states: int | None = None) -> str:
    with Session(engine) as session:
        stmt, _ = tq.page_statement(session, q, total, in_states)
        return _explain(engine, stmt)


def _explain(engine: sa.Engine, stmt: Any) -> str:
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    raw = engine.raw_connection()
    try:
        rows = raw.cursor().execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
    finally:
        raw.close()
    return " | ".join(str(r[-1]) for r in rows)


KILLED, PENDING = frozenset({"KILLED"}), frozenset({"PENDING"})


@pytest.mark.parametrize(("q", "total", "in_states", "index"), [
    (PageQuery(limit=100, offset=60), 157, None, "COVERING INDEX ix_tasks_order"),
    (PageQuery(limit=100, offset=0, order="desc"), 157, None, "COVERING INDEX ix_tasks_order"),
    (PageQuery(states=KILLED, offset=10), 31, None, "COVERING INDEX ix_tasks_state_order"),
    (PageQuery(states=frozenset({"KILLED", "PENDING"})), 10**6, None,
     "COVERING INDEX ix_tasks_order"),
    (PageQuery(name="build-"), 10**6, None, "COVERING INDEX ix_tasks_order"),
    (PageQuery(name="build-1"), 20, None, "ix_tasks_name_state"),
    # A name in one state with many matches walks the id-order index (it holds the name).
    (PageQuery(name="build-", states=KILLED, offset=500), 10**6, 10**6,
     "COVERING INDEX ix_tasks_order"),
    # A name in states that hold few tasks is sought by state, whatever the name matches.
    (PageQuery(name="b", states=PENDING), 15, 10_000, "INDEX ix_tasks_state"),
    (PageQuery(name="b", states=frozenset({"KILLED", "PENDING"})), 15, 12_000,
     "INDEX ix_tasks_state"),
    # Few matches, but in states that hold many: sought by name.
    (PageQuery(name="build-1", states=frozenset({"KILLED", "PENDING"})), 15, 10**6,
     "ix_tasks_name_state"),
    (PageQuery(name="build-", states=frozenset({"KILLED", "PENDING"}), offset=9), 10**6, 10**6,
     "COVERING INDEX ix_tasks_order"),
])
def test_pages_are_found_on_indexes_never_by_scanning_the_table(
        db: sa.Engine, q: PageQuery, total: int, in_states: int | None, index: str) -> None:
    plan = _plan(db, q, total, in_states)
    assert index in plan, plan
    assert "SCAN tasks" not in plan.replace("SCAN tasks USING", ""), plan


@pytest.mark.parametrize(("states", "name", "in_states", "index"), [
    (None, "build-", None, "COVERING INDEX ix_tasks_name_state"),
    (KILLED, "build-", None, "COVERING INDEX ix_tasks_name_state"),
    (KILLED, "build-", 10**6, "COVERING INDEX ix_tasks_name_state"),
    (PENDING, "b", 10_000, "INDEX ix_tasks_state"),
    (KILLED, None, None, "COVERING INDEX ix_tasks_state"),
])
def test_a_count_seeks_the_smaller_side(db: sa.Engine, states: frozenset[str] | None,
                                        name: str | None, in_states: int | None,
                                        index: str) -> None:
    """A name filter is counted on the name index (it holds the state: no row is read),
    unless the master's counts say the states asked for hold few tasks."""
    by_name = bool(name) and not (in_states is not None and in_states <= tq.SMALL_MATCH)
    with Session(db) as session:
        where = tq.filter_terms(session, states, name, index="name" if by_name else "state")
        stmt = sa.select(sa.func.count()).select_from(TaskRow.__table__).where(*where)
        plan = _explain(db, stmt)
        assert index in plan, plan
        assert "SCAN" not in plan, plan
        assert tq.count_matching(session, states, name, in_states) == sum(
            1 for r in _rows(157) if (states is None or r["state"] in states)
            and (name is None or str(r["name"]).startswith(name)))


def test_count_outside_counts_the_names_without_the_prefix_up_to_a_bound(db: sa.Engine
                                                                       ) -> None:
    rows = _rows(157)

    def outside(states: frozenset[str] | None, name: str) -> int:
        return sum(1 for r in rows if (states is None or r["state"] in states)
                   and not str(r["name"]).startswith(name))

    with Session(db) as session:
        for states in (None, KILLED, frozenset({"KILLED", "PENDING"}), frozenset({"LOST"})):
            for name in ("build-", "test-", "build-1", "zzz", "a", "t"):
                assert tq.count_outside(session, states, name, 1000) == outside(states, name)
        assert tq.count_outside(session, None, "build-", 53) == 52  # the 52 test- names
        assert tq.count_outside(session, None, "build-", 52) is None  # as many as the bound
        assert tq.count_outside(session, KILLED, "build-", 52) is None  # any state counts


@pytest.mark.parametrize("by_block", [False, True], ids=["walk", "by-block"])
@pytest.mark.parametrize("small", [1_000_000, 5], ids=["sorted", "walked"])
@pytest.mark.parametrize(("states", "name"), [(None, "build-"), (KILLED, "test-"),
                                              (None, "build-1"), (None, "nothing"),
                                              (frozenset({"KILLED", "PENDING"}), "b")])
def test_the_listing_read_matches_a_plain_sort(db: sa.Engine, states: frozenset[str] | None,
                                               name: str, small: int, by_block: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing's own read (master/task_listing.py): a name counted from the master's
    state counts less the names outside, or in the database (block by block when the
    master's blocks are known), cuts a plain sort's pages."""
    from master.task_listing import _read_page

    monkeypatch.setattr(tq, "SMALL_MATCH", small)
    chosen = [s for s in STATES + ["STAGING", "LOST"] if states is None or s in states]
    found = _positions(_rows(157)).by_block(chosen)
    assert found is not None
    blocks = tb.BlockCounts(*found) if by_block else None
    with Session(db) as session:
        for order in ("asc", "desc"):
            for offset in range(0, 170, 13):
                q = PageQuery(limit=7, offset=offset, states=states, name=name, order=order)
                total, want = _expected(q)
                got_total, records = _read_page(session, q, _in_states(states), None,
                                                blocks)
                assert got_total == total
                assert [r.id for r in records] == want, (q, total)


def test_a_prefix_every_task_shares_is_read_as_no_filter(tmp_path: Path) -> None:
    from master.task_listing import _read_page

    path = tmp_path / "shared.db"
    Store.open(str(path)).close_blocking()
    engine = sa.create_engine(f"sqlite:///{path}")
    names = ["job-1", "job-2", "job-\U0010ffff", "job-\U0010ffffz"] * 5
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(TaskRow), [
            TaskRecord.new(str(i), command="x", cpus=1, mem=1, now=1.0, name=n).to_json()
            for i, n in enumerate(names, 1)])
    with Session(engine) as session:
        for prefix in ("job-", "j", "job"):
            assert tq.count_outside(session, None, prefix) == 0, prefix
            # The master's count says 20; a seek of None walks as no filter would.
            total, records = _read_page(session, PageQuery(limit=3, offset=18, name=prefix),
                                        20, None, None)
            assert total == 20 and [r.id for r in records] == ["19", "20"]
        for prefix in ("job-1", "job-\U0010ffff", "jo-", "k"):
            assert tq.count_outside(session, None, prefix) != 0, prefix
        total, records = _read_page(session, PageQuery(name="job-\U0010ffff"), 20, None,
                                    None)
        assert total == 10 and len(records) == 10
    engine.dispose()


def test_prefix_end_bounds_exactly_the_names_with_that_prefix() -> None:
    assert tq.prefix_end("build-") == "build."
    assert tq.prefix_end("a\U0010ffff") == "b"  # the last code point has no successor
    assert tq.prefix_end("\U0010ffff\U0010ffff") is None
    assert tq.prefix_end("x\ud7ff") == "x\ue000"  # over the surrogates, which no name holds
    names = ["a", "ab", "a\U0010ffff", "a\U0010ffffz", "b", "a\x00", "aé", "\ud7ffq",
             "\ue000", "", "é", "é\U0010ffff"]
    for prefix in ["a", "a\U0010ffff", "\ud7ff", "é", "\U0010ffff", "ab"]:
        end = tq.prefix_end(prefix)
        for name in names:
            inside = prefix <= name and (end is None or name < end)
            assert inside == name.startswith(prefix), (prefix, name)


def test_counts_by_state_and_matches_are_exact(db: sa.Engine) -> None:
    rows = _rows(157)
    with Session(db) as session:
        by_state = tq.count_by_state(session)
        assert by_state == {s: sum(1 for r in rows if r["state"] == s) for s in STATES}
        assert tq.count_matching(session, frozenset({"KILLED", "FAILED"}), "test-") == sum(
            1 for r in rows if r["state"] in ("KILLED", "FAILED")
            and str(r["name"]).startswith("test-"))
        unended = tq.load_unended(session)
        assert {r.state for r in unended} == {"PENDING", "RUNNING"}
        assert [r.id for r in unended] == sorted((r.id for r in unended), key=int)
        assert tq.get(session, "5") is not None and tq.get(session, "9999") is None


def test_a_name_prefix_is_exact_with_wildcards_and_non_ascii(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Store.open(str(path)).close_blocking()
    engine = sa.create_engine(f"sqlite:///{path}")
    names = ["a%b", "axb", "a_c", "abc", "é-1", "é", "e-1", "a%", "a\U0010ffff",
             "a\U0010ffffz", "b", "\U0010ffff", "\ud7ffx", "\ue000"]
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(TaskRow), [
            TaskRecord.new(str(i), command="x", cpus=1, mem=1, now=1.0, name=n).to_json()
            for i, n in enumerate(names, 1)])
    with Session(engine) as session:
        for prefix in ["a%", "a_", "é", "a", "é-", "a\U0010ffff", "\U0010ffff", "\ud7ff"]:
            _, records = tq.page(session, PageQuery(name=prefix))
            assert sorted(r.name for r in records) == sorted(
                n for n in names if n.startswith(prefix)), prefix
    engine.dispose()


def test_retention_deletes_only_tasks_still_ended_before_the_cutoff(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Store.open(str(path)).close_blocking()
    engine = sa.create_engine(f"sqlite:///{path}")
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(TaskRow), _rows(40))
    with Session(engine) as session, session.begin():
        ids = tq.expired_ids(session, cutoff=2020.5, limit=100)
        assert ids == [str(i) for i in range(1, 21) if STATES[i % 5] in
                       ("FINISHED", "KILLED", "FAILED")]
        # One of them was re-queued meanwhile: its row is PENDING again and must stay.
        session.execute(sa.update(TaskRow).where(TaskRow.id == ids[0])
                        .values(state="PENDING", finished_at=None))
        gone = tq.delete_ended(session, ids, cutoff=2020.5)
        assert set(gone) == set(ids[1:]) and gone[ids[1]] == STATES[int(ids[1]) % 5]
    with sqlite3.connect(path) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM tasks")}
    assert ids[0] in left and not set(ids[1:]) & left and len(left) == 40 - len(ids) + 1
    engine.dispose()


async def test_store_read_runs_beside_a_write_batch(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        await store.write(functools.partial(tq.save_records, rows=[]))
        rec = TaskRecord.new("1", command="x", cpus=1, mem=1, now=1.0)
        await store.create_tasks(lambda numbers: [rec], 1)
        rec.state = "KILLED"
        assert await store.write(functools.partial(tq.save_records, rows=[rec.to_json()])) == 1
        got = await store.read(functools.partial(tq.get, task_id="1"))
        assert got is not None and got.state == "KILLED"
    finally:
        await store.close()


def _positions(rows: list[dict[str, object]]) -> Positions:
    positions = Positions()
    positions.begin()
    snapshot: dict[tuple[str, int, str], int] = {}
    for r in rows:
        length, prefix = block_of(str(r["id"]))
        key = (str(r["state"]), length, prefix)
        snapshot[key] = snapshot.get(key, 0) + 1
    positions.load(snapshot, len(rows))
    return positions


@pytest.mark.parametrize(("states", "name"), [f for f in FILTERS if f[1] is None])
def test_located_pages_match_a_plain_sort(db: sa.Engine, states: frozenset[str] | None,
                                          name: None) -> None:
    rows = _rows(157)
    positions = _positions(rows)
    chosen = [s for s in STATES + ["STAGING", "LOST"] if states is None or s in states]
    with Session(db) as session:
        for order in ("asc", "desc"):
            for limit in (1, 7, 50):
                for offset in range(0, 170, 5):
                    q = PageQuery(limit=limit, offset=offset, states=states, order=order)
                    total, want = _expected(q)
                    seek = None
                    if offset < total:
                        seek = positions.locate(chosen, tq.window_start(q, total))
                        assert seek is not None
                    got_total, records = tq.page(session, q, total, seek)
                    assert [r.id for r in records] == want, (q, seek)


@pytest.mark.parametrize(("states", "index"), [
    (None, "COVERING INDEX ix_tasks_order (<expr>=? AND id>?)"),
    (frozenset({"KILLED"}), "COVERING INDEX ix_tasks_state_order (state=? AND <expr>=? AND id>?)"),
    (frozenset({"KILLED", "FAILED"}), "COVERING INDEX ix_tasks_order (<expr>=? AND id>?)"),
])
def test_located_pages_seek_their_block_on_an_index(db: sa.Engine,
                                                    states: frozenset[str] | None,
                                                    index: str) -> None:
    with Session(db) as session:
        first, rest = tq.seek_statements(session, PageQuery(states=states), (3, "1"), 10, 100)
        plans = []
        for stmt in (first, rest.limit(5)):
            sql = str(stmt.compile(db, compile_kwargs={"literal_binds": True}))
            raw = db.raw_connection()
            try:
                plans.append(" | ".join(str(r[-1]) for r in raw.cursor().execute(
                    f"EXPLAIN QUERY PLAN {sql}")))
            finally:
                raw.close()
    assert index in plans[0], plans  # a seek to the block, in id order: no sort
    for plan in plans:
        assert "SEARCH tasks USING COVERING INDEX" in plan and "TEMP B-TREE" not in plan, plan
