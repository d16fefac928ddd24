"""The master's task queries beyond one row: pages, counts, active tasks, bulk writes, retention.

Pure functions over an open SQLAlchemy ``Session``, run through ``Store.read`` (a read-only
transaction off the event loop) or ``Store.write`` (inside a write batch). Portable SQL
(SQLite and PostgreSQL); the indexes they rely on are ``store_schema.TASK_INDEXES``.

Why the plans look as they do (1,000,000 rows, SQLite on 2 cores): an OFFSET walks the
index entries it skips, about 20 ns each when the index covers the query and ~1 µs when
every skipped row is looked up; a filter the index does not order forces a sort of every
match. So a page is found on a covering index in id order — per state, or the id-order
index that also holds state and name — and only its rows are read; a page in the back half
is taken from the other end (no skip is longer than half the matches); and few matches are
simply sorted. Ids are numbers as text, so ``(length(id), id)`` is their numeric order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from master.api import PageQuery
from master.store_schema import TaskRow, last_number
from master.store_tasks import record_from_row, records_from_result
from master.task_positions import Block
from master.tasks import STATES, TERMINAL_STATES, TaskRecord

__all__ = ["EDGE_WALK", "FEW_OUTSIDE", "SMALL_MATCH", "block_counts", "count_by_state",
           "count_matching", "count_outside", "delete_ended", "edge_ids", "expired_ids",
           "few_in_states", "filter_terms", "get", "load_unended", "page", "page_statement",
           "prefix_end", "records", "save_records", "seek_statements", "terms_for",
           "unindexed", "window_start"]

#: Up to this many matches a filtered page is sorted; past it, found in id order.
SMALL_MATCH = 20_000
#: A page is first sought by a walk this long from the end its order starts at (~0.5 µs an
#: entry: what a walk that fails costs is small beside the count by block that follows).
EDGE_WALK = 5_000
#: Fewer tasks than this without a name prefix, and a listing filtered by it is counted from
#: the master's counts less them (count_outside); small, as every name filter pays for it.
FEW_OUTSIDE = 2_000
_CHUNK = 500  # ids per IN (...): well under every driver's parameter limit
_UNENDED = ("PENDING", "STAGING", "RUNNING")
_table = TaskRow.__table__
_c = _table.c
_length = sa.func.length(_c.id)


_record = record_from_row


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def count_by_state(session: Session) -> dict[str, int]:
    """How many tasks the database holds in each of ``STATES`` that holds any: a range
    count per state on the state index (a GROUP BY over it took 140–380 ms at 1,010,000
    tasks, these 55–90 ms; the master waits for it before it serves)."""
    counts = [sa.select(sa.func.count()).where(_c.state == s).scalar_subquery()
              for s in STATES]
    row = session.execute(sa.select(*counts)).one()
    return {s: int(n) for s, n in zip(STATES, row) if n}


def block_counts(session: Session) -> tuple[dict[tuple[str, int, str], int], int]:
    """({(state, length, prefix): n}, the last task id allocated): the snapshot behind
    master/task_positions.py (ids of one length sharing all but their last 3 characters).
    It runs on the writer thread at start, so writes wait for it: on SQLite it is counted
    block by block (``_sqlite_block_counts``), on PostgreSQL by one GROUP BY."""
    if session.get_bind().dialect.name == "sqlite":
        counts = _sqlite_block_counts(session)
    else:
        prefix = sa.case((_length > 3, sa.func.substr(_c.id, 1, _length - 3)), else_="")
        stmt = (sa.select(_c.state, _length, prefix, sa.func.count())
                .group_by(_c.state, _length, prefix))
        counts = {(str(s), int(n), str(p)): int(c) for s, n, p, c in session.execute(stmt)}
    return counts, last_number(session, "task")


# Above every id of a block once its prefix is put before it: a block's ids are its prefix
# and three characters, none above U+10FFFF (and SQLite compares UTF-8, in code point order).
_TOP = "\U0010ffff" * 4
_PREFIX_OF = "CASE WHEN length({0}) > 3 THEN substr({0}, 1, length({0}) - 3) ELSE '' END"
# Every block, in listing order: a skip scan on ix_tasks_order, two seeks a block (the first
# id past the block in its length, else the first of the next length). The first seek is
# ordered by id alone: with length(id) in the ORDER BY as well, SQLite sorts what follows.
_SQLITE_BLOCKS = sa.text(f"""
WITH RECURSIVE first(id) AS (
  SELECT (SELECT id FROM tasks ORDER BY length(id), id LIMIT 1)
  UNION ALL
  SELECT coalesce(
    (SELECT t.id FROM tasks AS t WHERE length(t.id) = length(first.id)
       AND t.id >= {_PREFIX_OF.format("first.id")} || :top
     ORDER BY t.id LIMIT 1),
    (SELECT t.id FROM tasks AS t WHERE length(t.id) > length(first.id)
     ORDER BY length(t.id), t.id LIMIT 1))
  FROM first WHERE first.id IS NOT NULL
)
SELECT length(id), {_PREFIX_OF.format("id")} FROM first WHERE id IS NOT NULL""")
# Each block's tasks in each state: a range count per state on ix_tasks_state_order.
_SQLITE_IN_BLOCK = sa.text("SELECT " + ", ".join(
    f"(SELECT count(*) FROM tasks WHERE state = :s{i}"
    " AND length(id) = json_extract(b.value, '$[0]') AND id >= json_extract(b.value, '$[1]')"
    " AND id < json_extract(b.value, '$[2]'))" for i in range(len(STATES)))
    + " FROM json_each(:blocks) AS b ORDER BY b.key")


def _sqlite_block_counts(session: Session) -> dict[tuple[str, int, str], int]:
    """``block_counts``' snapshot on SQLite, without sorting every task (a GROUP BY on a
    block's prefix sorts a million rows: 1.3–2.0 s on 2 cores): the blocks found by a skip
    scan, then one range count per block and state (0.17 s at 1,010,000 tasks)."""
    conn = session.connection()
    blocks = [(int(n), str(p)) for n, p in conn.execute(_SQLITE_BLOCKS, {"top": _TOP})]
    if not blocks:
        return {}
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(STATES)}
    params["blocks"] = json.dumps([[n, p, p + _TOP] for n, p in blocks])
    counts: dict[tuple[str, int, str], int] = {}
    for (n, p), row in zip(blocks, conn.execute(_SQLITE_IN_BLOCK, params)):
        for state, found in zip(STATES, row):
            if found:
                counts[(state, n, p)] = int(found)
    return counts


def load_unended(session: Session) -> list[TaskRecord]:
    """Every PENDING, STAGING or RUNNING task, oldest submission first (recovery at start)."""
    stmt = (sa.select(_table).where(_c.state.in_(_UNENDED))
            .order_by(_c.submitted_at, _length, _c.id))
    return records_from_result(session.connection().execute(stmt))


def get(session: Session, task_id: str) -> TaskRecord | None:
    row = session.execute(sa.select(_table).where(_c.id == task_id)).mappings().first()
    return None if row is None else _record(row)


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (in code point order,
    which is SQLite's BINARY order of UTF-8), or None when there is none (``prefix`` is all
    U+10FFFF): ``prefix <= name < prefix_end(prefix)`` is exactly ``name.startswith(prefix)``.
    Pure; the surrogates, which no stored name holds, are skipped."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code <= 0x10FFFF:
            chars[-1] = chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)
            return "".join(chars)
        chars.pop()
    return None


def unindexed(column: Any) -> Any:
    """``+column`` on SQLite: the same value, but no index may serve a term on it, so the
    planner walks the index the query means instead of guessing (it has no statistics)."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def filter_terms(session: Session, states: frozenset[str] | None, name: str | None, *,
           index: str | None) -> list[Any]:
    """The filter's terms. ``index`` names the one term an index may serve ("state" or
    "name"); on SQLite the others are written so that none can (``+column``), and with
    None the planner walks the index that orders the query. PostgreSQL's planner needs no
    such help: there every term is plain, and a name prefix is compared exactly with
    ``substr`` (its collation need not be byte order)."""
    return terms_for(session.get_bind().dialect.name, states, name, index=index)


def terms_for(dialect: str, states: frozenset[str] | None, name: str | None, *,
              index: str | None) -> list[Any]:
    """``filter_terms`` for a database of ``dialect`` ("sqlite", "postgresql")."""
    sqlite = dialect == "sqlite"
    terms: list[Any] = []
    if name:
        if sqlite:
            # BINARY collation orders UTF-8 bytes: the prefix is exactly a range, which the
            # name index seeks and which a walk compares cheaply (no function per row).
            column = _c.name if index == "name" else unindexed(_c.name)
            terms.append(column >= name)
            end = prefix_end(name)
            if end is not None:
                terms.append(column < end)
        else:
            terms.append(sa.func.substr(_c.name, 1, len(name)) == name)
    if states is not None:
        state = _c.state if index == "state" or not sqlite else unindexed(_c.state)
        terms.append(state.in_(sorted(states)) if len(states) > 1
                     else state == next(iter(states)))
    return terms


def count_outside(session: Session, states: frozenset[str] | None, name: str,
                  bound: int | None = None) -> int | None:
    """How many tasks in ``states`` have a name that does not start with ``name``, when
    fewer than ``bound`` (default ``FEW_OUTSIDE``) tasks of any state do; None when as
    many or more do (or on a database other than SQLite, where a prefix is not a byte
    range). Two seeks on the name index, each reading at most ``bound`` entries: with few
    names outside, the matches are the tasks in those states (which the master counts)
    less these."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    if bound is None:
        bound = FEW_OUTSIDE
    outside: list[Any] = [_c.name < name]
    end = prefix_end(name)
    if end is not None:
        outside.append(_c.name >= end)
    found = 0
    for term in outside:
        entries = sa.select(_c.state).where(term).limit(bound).subquery()
        in_states = (sa.func.count() if states is None else
                     sa.func.sum(sa.case((entries.c.state.in_(sorted(states)), 1), else_=0)))
        seen, inside = session.execute(sa.select(sa.func.count(), in_states)
                                       .select_from(entries)).one()
        if seen >= bound:
            return None
        found += int(inside or 0)
    return found


def few_in_states(states: frozenset[str] | None, in_states: int | None) -> bool:
    """True when the states asked for hold few tasks (``in_states``: how many, if known)."""
    return states is not None and in_states is not None and in_states <= SMALL_MATCH


def count_matching(session: Session, states: frozenset[str] | None, name: str | None,
                   in_states: int | None = None, bound: int | None = None) -> int:
    """Exact number of tasks matching the filter: on the name index when there is a name
    (it holds the state too), unless the states hold few tasks (``in_states``, when the
    caller knows how many) — then on the state index, whatever the name matches. With
    ``bound``, counting stops there (the answer is at most ``bound``)."""
    by_name = bool(name) and not few_in_states(states, in_states)
    terms = filter_terms(session, states, name, index="name" if by_name else "state")
    if bound is None:
        stmt = sa.select(sa.func.count()).select_from(_table).where(*terms)
    else:
        # Select a column the index holds (the name index has no id): no row is read.
        found = sa.select(_c.name).where(*terms).limit(bound).subquery()
        stmt = sa.select(sa.func.count()).select_from(found)
    return int(session.execute(stmt).scalar_one())


def page_statement(session: Session, q: PageQuery, total: int,
                   in_states: int | None = None) -> tuple[Any, bool]:
    """The query for the ids of page ``q`` among ``total`` matches (``q.offset < total``),
    and whether it walks backwards (its ids then come in reverse). ``in_states``: how many
    tasks the states asked for hold, when the caller knows."""
    offset, limit = q.offset, min(q.limit, total - q.offset)
    descending = q.order == "desc"
    flipped = 2 * offset + limit > total  # the back half: walk in from the other end
    if flipped:
        offset, descending = total - offset - limit, not descending
    key = [_length.desc(), _c.id.desc()] if descending else [_length, _c.id]
    few = few_in_states(q.states, in_states)
    index: str | None
    if total <= SMALL_MATCH or few:
        # Few matches: seek them on the smaller side's index, and sort them.
        index = "name" if q.name and not few else "state"
    elif q.states is not None and len(q.states) == 1 and not q.name:
        index = "state"  # that state's index is in id order
    else:
        # Many matches: walk the id-order index, which holds state and name (the state
        # index does not hold the name: a walk there would read every row).
        index = None
    stmt = (sa.select(_c.id).where(*filter_terms(session, q.states, q.name, index=index))
            .order_by(*key).limit(limit).offset(offset))
    return stmt, flipped


def _page_ids(session: Session, q: PageQuery, total: int, in_states: int | None
              ) -> list[str]:
    """The ids of page ``q`` among ``total`` matches, in the order asked for."""
    stmt, flipped = page_statement(session, q, total, in_states)
    ids = [str(i) for i in session.scalars(stmt)]
    return ids[::-1] if flipped else ids


def seek_statements(session: Session, q: PageQuery, block: Block, skip: int,
                    limit: int) -> tuple[Any, Any]:
    """The two queries of a located page: from the first id of ``block`` (skipping
    ``skip`` matches), then, if the page runs on, from the first id of the next length."""
    length, prefix = block
    walk = q.states is not None and len(q.states) > 1  # on the id-order index, filtering
    terms = filter_terms(session, q.states, None, index=None if walk else "state")
    # One length: id order alone (SQLite sorts when an ORDER BY names the fixed length).
    first = (sa.select(_c.id).where(*terms, _length == length, _c.id >= prefix)
             .order_by(_c.id).limit(limit).offset(skip))
    rest = sa.select(_c.id).where(*terms, _length > length).order_by(_length, _c.id)
    return first, rest


def _seek_ids(session: Session, q: PageQuery, total: int, seek: tuple[Block, int]) -> list[str]:
    limit = min(q.limit, total - q.offset)
    block, skip = seek
    first, rest = seek_statements(session, q, block, skip, limit)
    ids = [str(i) for i in session.scalars(first)]
    if len(ids) < limit:
        ids += [str(i) for i in session.scalars(rest.limit(limit - len(ids)))]
    return ids[::-1] if q.order == "desc" else ids


def edge_ids(session: Session, q: PageQuery, bound: int | None = None) -> list[str] | None:
    """The ids of page ``q`` when its matches are among the first ``bound`` tasks (default
    ``EDGE_WALK``) from the end its order starts at, else None: a walk of at most that
    many entries of the id-order index (which holds state and name). The first page of a
    filter whose matches are recent (or old) is found so without counting every match."""
    bound = EDGE_WALK if bound is None else bound
    wanted = q.offset + q.limit
    if wanted > bound:
        return None
    key = [_length.desc(), _c.id.desc()] if q.order == "desc" else [_length, _c.id]
    edge = (sa.select(_c.id, _c.state, _c.name).order_by(*key).limit(bound)
            .subquery("edge"))  # its LIMIT keeps SQLite from merging it with the filter
    terms = []
    if q.name:
        terms.append(edge.c.name >= q.name)
        end = prefix_end(q.name)
        if end is not None:
            terms.append(edge.c.name < end)
    if q.states is not None:
        terms.append(edge.c.state.in_(sorted(q.states)))
    ids = [str(i) for i in session.scalars(sa.select(edge.c.id).where(*terms).limit(wanted))]
    if len(ids) < wanted:
        return None  # fewer matches there: the page is further in, or past the last match
    return ids[q.offset:]


def window_start(q: PageQuery, total: int) -> int:
    """Where page ``q`` starts among ``total`` matches in ascending order (a descending
    page is the ascending window that ends ``offset`` from the end)."""
    limit = min(q.limit, total - q.offset)
    return q.offset if q.order == "asc" else total - q.offset - limit


def page(session: Session, q: PageQuery, total: int | None = None,
         seek: tuple[Block, int] | None = None, in_states: int | None = None
         ) -> tuple[int, list[TaskRecord]]:
    """(total, records) of page ``q``. ``total`` may be given when the caller knows it
    exactly (the master counts tasks by state); otherwise it is counted here, in the same
    transaction as the page. ``seek``: the block where the page's ascending window starts
    (``window_start``) and how many matches precede it there (master/task_positions.py);
    without it the page is found by walking an index. ``in_states``: how many tasks the
    states asked for hold (the master's counts), which picks the index for a name filter."""
    if total is None:
        total = count_matching(session, q.states, q.name, in_states)
    if q.offset >= total or q.limit == 0:
        return total, []
    ids = (_page_ids(session, q, total, in_states) if seek is None
           else _seek_ids(session, q, total, seek))
    return total, records(session, ids)


def records(session: Session, ids: list[str]) -> list[TaskRecord]:
    """The rows of ``ids``, in that order (an id deleted meanwhile is left out)."""
    rows = {r.id: r for r in _fetch(session, ids)}
    return [rows[i] for i in ids if i in rows]


def _fetch(session: Session, ids: list[str]) -> list[TaskRecord]:
    out: list[TaskRecord] = []
    for chunk in _chunks(ids):
        stmt = sa.select(_table).where(_c.id.in_(chunk))
        out += records_from_result(session.connection().execute(stmt))
    return out


def save_records(session: Session, rows: list[dict[str, Any]]) -> int:
    """Update existing tasks to these whole-record snapshots (by id), in one statement per
    chunk; rows touched. For bulk changes of tasks that exist (a bulk kill)."""
    for i in range(0, len(rows), _CHUNK):
        session.execute(sa.update(TaskRow), rows[i : i + _CHUNK])
    return len(rows)


def _ended_before(cutoff: float) -> list[Any]:
    return [_c.finished_at < cutoff, _c.state.in_(sorted(TERMINAL_STATES))]


def expired_ids(session: Session, cutoff: float, limit: int) -> list[str]:
    """Up to ``limit`` ids of tasks that ended before ``cutoff``, earliest first."""
    stmt = (sa.select(_c.id).where(*_ended_before(cutoff))
            .order_by(_c.finished_at).limit(limit))
    return [str(i) for i in session.scalars(stmt)]


def delete_ended(session: Session, ids: list[str], cutoff: float) -> dict[str, str]:
    """Delete those of ``ids`` that still ended before ``cutoff``; {id: state} of the
    deleted. A task re-queued since (no longer ended in the database) is left alone."""
    deleted: dict[str, str] = {}
    for chunk in _chunks(ids):
        wanted = [_c.id.in_(chunk), *_ended_before(cutoff)]
        found = {str(i): str(s) for i, s in session.execute(
            sa.select(_c.id, _c.state).where(*wanted))}
        if found:
            session.execute(sa.delete(TaskRow).where(_c.id.in_(list(found))))
            deleted.update(found)
    return deleted
