"""A name filter counted block by block: a page at any offset among a million matches.

Why: the tasks whose name starts with a prefix lie anywhere in id order, so finding the
M-th of them by walking an index in id order reads every task before it (40–60 ms in the
middle of a million, on SQLite on 2 cores). Instead each block of ids (master/
task_positions.py: ids of one length that share all but their last three characters,
about 1,000 tasks) is sought on ``ix_tasks_block_name``, which holds the names of each
block in order: one seek per block, and one index entry per match, give how many matches
each block holds; the page's window is then placed by adding these counts, and read from
the one or two blocks that hold it.

Two ways to count, picked by the caller (master/task_listing.py):

- ``block_page``: the matches themselves, block by block (a seek per block and ~100 ns a
  match: ~20 ms for 100,000 matches among 1,000,000 tasks);
- ``complement_page``: when few tasks lack the prefix, the tasks that lack it, block by
  block, taken from the master's own count of each block's tasks in the states asked for.

Blocks where the master counts no task in the states asked for are skipped. SQLite only
(the index is made on SQLite alone); the blocks come from the master's positions, which
hold every block the database may hold. Pure functions over an open ``Session``, run in
the store's read transaction.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from master.api import PageQuery
from master.store_schema import TASK_BLOCK, TaskRow
from master.task_positions import Block
from master.task_queries import prefix_end, records, terms_for, window_start
from master.tasks import TaskRecord

__all__ = ["BlockCounts", "block_ids", "block_matches", "block_outside", "block_page",
           "block_rows", "block_window", "complement_page", "per_block_statement"]

_c = TaskRow.__table__.c


class BlockCounts(NamedTuple):
    """The master's counts behind a name filter's page (from master/task_positions.py)."""

    blocks: list[Block]  #: every block of ids the database may hold, in listing order
    in_states: list[int]  #: how many tasks in the states asked for each block holds
    every: list[int]  #: how many tasks each block holds, in any state

    def held(self) -> tuple[list[Block], list[bool]]:
        """The blocks holding a task in the states asked for, and for each whether every
        task it holds is in them (its state needs no compare: ~100 ns a match saved)."""
        kept = [(b, n == all_) for b, n, all_ in zip(self.blocks, self.in_states, self.every)
                if n]
        return [b for b, _ in kept], [whole for _, whole in kept]


def block_rows(blocks: Sequence[Block], whole: Sequence[bool] | None = None) -> str:
    """``blocks`` as the JSON that ``per_block_statement`` takes: [length, prefix, flag]
    each, the flag from ``whole`` (none set when it is None)."""
    flags = [False] * len(blocks) if whole is None else whole
    return json.dumps([[n, p, int(w)] for (n, p), w in zip(blocks, flags)])


def _mode(whole: Sequence[bool] | None) -> str:
    if whole is None or not any(whole):
        return "none"
    return "all" if all(whole) else "some"


def per_block_statement(value: Any, filters: Sequence[list[Any]],
                        whole_filters: Sequence[list[Any]] = (), mode: str = "none") -> Any:
    """One row per block of the JSON bound as ``blocks`` (``block_rows``), in its order:
    ``value`` (an aggregate) over the block's tasks that meet each of ``filters`` (lists
    of terms), summed over the filters; or, for a block whose flag is set, each of
    ``whole_filters`` instead (``mode``: "none" of the blocks is flagged, "all" are, or
    "some": then SQLite's CASE runs only the subqueries of the branch it takes). Each is
    one seek per block on ix_tasks_block_name, a correlated subquery, so that the blocks
    drive the plan and the index serves the name's range inside each block."""
    rows = (sa.func.json_each(sa.bindparam("blocks", type_=sa.Text))
            .table_valued("key", "value").alias("block"))
    length, prefix, flag = (sa.func.json_extract(rows.c.value, sa.literal_column(f"'$[{i}]'"))
                            for i in range(3))

    def summed(chosen: Sequence[list[Any]]) -> Any:
        parts = [sa.select(value).where(TASK_BLOCK[0] == length, TASK_BLOCK[1] == prefix,
                                        *terms).scalar_subquery() for terms in chosen]
        return functools.reduce(operator.add, parts)

    if mode == "none":
        total = summed(filters)
    elif mode == "all":
        total = summed(whole_filters)
    else:
        total = sa.case((flag == 1, summed(whole_filters)), else_=summed(filters))
    return sa.select(total).select_from(rows).order_by(rows.c.key)


def _outside_terms(states: frozenset[str] | None, name: str) -> list[list[Any]]:
    in_states = terms_for("sqlite", states, None, index="name")
    filters = [[*in_states, _c.name < name]]
    end = prefix_end(name)
    if end is not None:
        filters.append([*in_states, _c.name >= end])
    return filters


@functools.lru_cache(maxsize=64)
def _statement(kind: str, states: frozenset[str] | None, name: str, mode: str) -> Any:
    """The statement of ``block_matches``, ``block_outside`` or ``block_ids`` (``kind``),
    built once per filter: building one and its cache key costs ~1.5 ms, the price of
    ~10,000 counted matches."""
    if kind == "outside":
        return per_block_statement(sa.func.count(), _outside_terms(states, name),
                                   _outside_terms(None, name), mode)
    value = (sa.func.count() if kind == "matches"
             else sa.func.group_concat(_c.id, sa.literal_column("','")))
    return per_block_statement(value, [terms_for("sqlite", states, name, index="name")],
                               [terms_for("sqlite", None, name, index="name")], mode)


def _per_block(session: Session, kind: str, blocks: Sequence[Block],
               states: frozenset[str] | None, name: str,
               whole: Sequence[bool] | None) -> list[Any]:
    """The first column of every row of ``kind``'s statement over ``blocks``, through Core,
    fetched at once (the ORM's row loading costs ~3 µs a row, and these are a thousand
    rows of one number)."""
    stmt = _statement(kind, states, name, _mode(whole))
    return list(session.connection().execute(stmt, {"blocks": block_rows(blocks, whole)}
                                             ).scalars().all())


def block_matches(session: Session, blocks: Sequence[Block], states: frozenset[str] | None,
                  name: str, whole: Sequence[bool] | None = None) -> list[int]:
    """How many tasks in ``states`` named with the prefix ``name`` each of ``blocks``
    holds; a block flagged in ``whole`` holds no task outside ``states``, so its state is
    not compared. The cost is a seek per block and an index entry per match."""
    return [int(n) for n in _per_block(session, "matches", blocks, states, name, whole)]


def block_outside(session: Session, blocks: Sequence[Block], states: frozenset[str] | None,
                  name: str, whole: Sequence[bool] | None = None) -> list[int]:
    """How many tasks in ``states`` whose name does not start with ``name`` each of
    ``blocks`` holds (``whole`` as for ``block_matches``): two seeks per block (the names
    before the prefix, and after it)."""
    return [int(n) for n in _per_block(session, "outside", blocks, states, name, whole)]


def block_ids(session: Session, blocks: Sequence[Block], states: frozenset[str] | None,
              name: str, whole: Sequence[bool] | None = None) -> list[str]:
    """The ids of the tasks in ``states`` named with the prefix ``name`` in ``blocks``
    (``whole`` as for ``block_matches``), in id order (ids are numbers: no comma inside
    one)."""
    ids = [i for text in _per_block(session, "ids", blocks, states, name, whole) if text
           for i in str(text).split(",")]
    ids.sort(key=lambda i: (len(i), i))
    return ids


def block_window(counts: Sequence[int], start: int, limit: int) -> tuple[int, int, int]:
    """(first, stop, skip): blocks ``first`` to ``stop - 1`` hold matches ``start`` to
    ``start + limit - 1`` (counting from 0, given each block's ``counts``), and ``skip``
    matches of block ``first`` come before ``start``. Pure; ``start + limit`` must not
    exceed the sum of ``counts``, and ``limit`` must be positive."""
    seen, first = 0, 0
    while seen + counts[first] <= start:
        seen += counts[first]
        first += 1
    skip, stop, held = start - seen, first, seen
    while held < start + limit:
        held += counts[stop]
        stop += 1
    return first, stop, skip


def _page_from(session: Session, q: PageQuery, name: str, blocks: Sequence[Block],
               whole: Sequence[bool], counts: Sequence[int]) -> tuple[int, list[TaskRecord]]:
    """Page ``q`` given each block's number of matches."""
    total = sum(counts)
    if q.offset >= total or q.limit <= 0:
        return total, []
    limit = min(q.limit, total - q.offset)
    first, stop, skip = block_window(counts, window_start(q, total), limit)
    held = [i for i in range(first, stop) if counts[i]]
    ids = block_ids(session, [blocks[i] for i in held], q.states, name,
                    [whole[i] for i in held])[skip : skip + limit]
    return total, records(session, ids[::-1] if q.order == "desc" else ids)


def block_page(session: Session, q: PageQuery, name: str, counts: BlockCounts
               ) -> tuple[int, list[TaskRecord]]:
    """(total, records) of page ``q``, its name filter counted block by block in the
    database (``block_matches``), in the blocks that hold tasks in the states asked for.
    (Counting every state and taking away the matches in the other states, when those
    hold few tasks, was tried: reading those tasks' names costs what comparing the state
    of every match does.)"""
    held, whole = counts.held()
    return _page_from(session, q, name, held, whole,
                      block_matches(session, held, q.states, name, whole))


def complement_page(session: Session, q: PageQuery, name: str, counts: BlockCounts
                    ) -> tuple[int, list[TaskRecord]]:
    """(total, records) of page ``q`` when few tasks lack the prefix: each block's matches
    are the master's count of its tasks in the states asked for less those that lack the
    name (``block_outside``), as the listing counts the states without a name."""
    held, whole = counts.held()
    outside = block_outside(session, held, q.states, name, whole)
    matches = [max(0, n - out) for n, out in zip((n for n in counts.in_states if n), outside)]
    return _page_from(session, q, name, held, whole, matches)
