"""The leader epoch: fencing a deposed master's writes, in the database itself.

A master that becomes leader claims a new epoch (``claim``: the ``leadership`` row's epoch
plus one, with its name, in one statement that locks the row until commit). From then on
every write transaction of its store begins with ``check``, which reads the epoch under a
shared row lock (``SELECT … FOR SHARE`` on PostgreSQL; on SQLite the whole database is
already locked by BEGIN IMMEDIATE) and raises ``StoreFenced`` when another master claimed a
newer one. So the two serialize: a claim waits for the writes that passed their check to
commit, and every write that starts after the claim sees it. A deposed leader's writes never
land, even if it has not noticed that it lost (stopped with SIGSTOP, cut off).

A store that never claimed checks nothing: a single master without ``--zk`` is unchanged.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

from master.store_faults import StoreFenced
from master.store_schema import LEADERSHIP, upsert_statement

_ROW = 1


def claim(session: Session, owner: str) -> int:
    """Raise the epoch by one (the first claim makes it 1), record ``owner``; the new epoch."""
    now = time.time()
    stmt = upsert_statement(session, LEADERSHIP, ["id"], {
        "epoch": LEADERSHIP.c.epoch + 1, "owner": owner, "claimed_at": now})
    return int(session.execute(stmt.values(id=_ROW, epoch=1, owner=owner, claimed_at=now)
                               .returning(LEADERSHIP.c.epoch)).scalar_one())


# Built once: it runs at the start of every write transaction of a claimed store.
_CURRENT = (sa.select(LEADERSHIP.c.epoch, LEADERSHIP.c.owner)
            .where(LEADERSHIP.c.id == _ROW).with_for_update(read=True))


def current(session: Session) -> tuple[int, str] | None:
    """(epoch, owner) of the last claim, locked against claims until this transaction ends."""
    row = session.connection().execute(_CURRENT).first()  # Core: a quarter cheaper
    return None if row is None else (int(row.epoch), str(row.owner))


def check(session: Session, epoch: int, where: str) -> None:
    """Raise ``StoreFenced`` unless ``epoch`` is still the database's (see module doc)."""
    now = current(session)
    if now is not None and now[0] == epoch:
        return
    who = "the leadership row is gone" if now is None else (
        f"master {now[1]!r} claimed leadership epoch {now[0]}")
    raise StoreFenced(
        f"database {where}: {who} after this master's epoch {epoch}, so this master no "
        "longer leads and its writes are refused (nothing of this one was stored); it must "
        "step down, or claim leadership again")
