"""Opening the master's database: URL parsing, SQLite tuning, and clear open-time errors.

Pure helpers for ``Store.open``: each turns a common mistake (a directory for a file, a
missing directory, a read-only or locked file, a driver not installed) into a ``StoreError``
that says what to do, before SQLite reports only "unable to open database file".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from master.store_faults import StoreError, db_message, is_transient

log = logging.getLogger("master.store")


def parse_url(url: str) -> URL:
    """An SQLAlchemy URL, or a plain file path meaning a SQLite file."""
    if "://" not in url:
        return URL.create("sqlite", database=url)
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"cannot parse database URL {url!r} ({exc}); use a file path such as "
            "./master.db, or a URL such as sqlite:////var/lib/cluster/master.db"
        ) from None


def sqlite_file(url: URL) -> Path | None:
    """The file of a plain SQLite URL; None for memory, ``file:`` URIs and other databases."""
    db = url.database if url.get_backend_name() == "sqlite" else None
    return Path(db).absolute() if db and db != ":memory:" and not db.startswith("file:") else None


def check_sqlite_path(path: Path) -> None:
    """Catch the common mistakes before SQLite reports only 'unable to open database file'."""
    if path.is_dir():
        raise StoreError(
            f"database path {path} is a directory; give a file such as {path / 'master.db'}"
        )
    parent = path.parent
    if parent.is_dir():
        return
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(
            f"cannot create database {path}: {ancestor} is a file, not a directory; "
            "choose a --db path inside a directory"
        )
    raise StoreError(
        f"cannot create database {path}: directory {parent} does not exist; "
        f"create it (mkdir -p {parent}) or choose another --db"
    )


def explain(exc: BaseException, where: str, busy_timeout: float) -> StoreError:
    """Turn a driver error at open into what the user should do about it."""
    text = db_message(exc)
    if is_transient(exc):
        return StoreError(
            f"database {where} is locked by another process (waited {busy_timeout:g} s); "
            "is another master running with the same --db? Stop it or choose another --db"
        )
    for needle, advice in _OPEN_ADVICE.items():
        if needle in text.lower():
            return StoreError(advice.format(where=where))
    return StoreError(f"cannot use database {where}: {text}")


_OPEN_ADVICE = {
    "readonly": "database {where} is read-only; the master must write to it: fix the "
    "permissions of the file and its directory, or choose another --db",
    "unable to open database file": "cannot open database {where}: SQLite could not open "
    "or create the file; check that its directory exists and is writable by this user",
    "not a database": "{where} is not a SQLite database; choose another --db",
}


def tune_sqlite(engine: Engine, busy_timeout: float, *, wal: bool) -> None:
    """WAL + NORMAL sync, a lock wait, and BEGIN IMMEDIATE so lock conflicts show at BEGIN."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy's recipe)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if wal:
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode and str(mode[0]).lower() != "wal":
                log.warning("SQLite refused WAL (journal_mode=%s); writes will be slower", mode[0])
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Store.read's transactions only read: a deferred BEGIN takes no write lock.
        read_only = conn.get_execution_options().get("read_only")
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
