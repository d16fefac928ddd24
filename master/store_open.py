"""Opening the master's database: URL parsing, SQLite and PostgreSQL tuning, clear errors.

Helpers for ``Store.open``: each turns a common mistake (a directory for a file, a missing
directory, a read-only or locked file, a driver not installed, a server that cannot be
reached) into a ``StoreError`` that says what to do, before SQLite reports only "unable to
open database file". The store supports two databases: SQLite files and PostgreSQL through
psycopg 3 (``postgresql://`` means ``postgresql+psycopg://``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from master.store_faults import StoreError, db_message, is_transient

log = logging.getLogger("master.store")


def parse_url(url: str) -> URL:
    """An SQLAlchemy URL, or a plain file path meaning a SQLite file.

    Raises:
        StoreError: it does not parse, or names a database other than SQLite and PostgreSQL
            (through psycopg 3).
    """
    if "://" not in url:
        return URL.create("sqlite", database=url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"cannot parse database URL {url!r} ({exc}); use a file path such as "
            "./master.db, or a URL such as sqlite:////var/lib/cluster/master.db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and "+" not in parsed.drivername:
        return parsed.set(drivername="postgresql+psycopg")
    driver = parsed.drivername.partition("+")[2]
    if backend == "postgresql" and driver != "psycopg":
        raise StoreError(
            f"database URL {parsed.render_as_string(hide_password=True)} uses the driver "
            f"{driver!r}; the master talks to PostgreSQL through psycopg 3: write "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE") from None
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"database URL {parsed.render_as_string(hide_password=True)}: the master stores "
            f"its state in SQLite or PostgreSQL, not {backend!r}; use a file path such as "
            "./master.db or a URL such as postgresql+psycopg://USER:PASSWORD@HOST/DATABASE"
        ) from None
    return parsed


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
            return StoreError(advice.format(where=where, error=text.strip()))
    return StoreError(f"cannot use database {where}: {text}")


_OPEN_ADVICE = {
    "readonly": "database {where} is read-only; the master must write to it: fix the "
    "permissions of the file and its directory, or choose another --db",
    "unable to open database file": "cannot open database {where}: SQLite could not open "
    "or create the file; check that its directory exists and is writable by this user",
    "not a database": "{where} is not a SQLite database; choose another --db",
    "password authentication failed": "PostgreSQL refused the user or password of {where}: "
    "fix them in --db ({error})",
    "does not exist": "cannot use {where}: {error}; create it (createdb) or fix --db",
    "connection refused": "cannot reach the PostgreSQL server of {where}: the connection "
    "was refused; is it running and listening there? ({error})",
    "timeout expired": "cannot reach the PostgreSQL server of {where}: it did not answer "
    "in time; is the address right, and the server running? ({error})",
}


@dataclass(frozen=True)
class PgTuning:
    """Timeouts for PostgreSQL, so that a server gone, frozen or cut off becomes a clear
    ``StoreUnavailable`` within seconds instead of a write pending for ever (seconds)."""

    connect_timeout: int = 3  #: libpq's, a whole number of seconds (2 at least)
    statement_timeout: float = 60.0  #: the server cancels a statement running longer
    #: the server ends a session left inside a transaction, so that a frozen master's locks
    #: (its hold on the leader epoch included) are released
    idle_in_transaction_timeout: float = 5.0
    keepalives_idle: int = 5  #: TCP keepalives: a server machine gone from the network ...
    keepalives_interval: int = 2
    keepalives_count: int = 3
    tcp_user_timeout: float = 10.0  #: ... or unsent data stuck (both only across a network)
    stall: float = 2.0  #: a request this old makes the watchdog ask if the server answers
    probe_timeout: float = 1.0  #: how long the watchdog waits for that answer


def postgres_connect_args(url: URL, lock_timeout: float, tuning: PgTuning) -> dict[str, Any]:
    """psycopg connection arguments: ``tuning``'s timeouts and keepalives, and
    ``lock_timeout`` (seconds) for every lock wait; a setting in the URL wins."""
    def ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    defaults: dict[str, Any] = {
        "connect_timeout": max(2, tuning.connect_timeout),
        "keepalives": 1,
        "keepalives_idle": tuning.keepalives_idle,
        "keepalives_interval": tuning.keepalives_interval,
        "keepalives_count": tuning.keepalives_count,
        "tcp_user_timeout": ms(tuning.tcp_user_timeout),
        "application_name": "cluster-master",
    }
    args = {key: value for key, value in defaults.items() if key not in url.query}
    # The server's side of the keepalives: it notices a master's machine gone (and frees
    # what that master had locked) about when the master would notice the server gone.
    settings = (f"-c statement_timeout={ms(tuning.statement_timeout)} "
                f"-c lock_timeout={ms(lock_timeout)} "
                f"-c idle_in_transaction_session_timeout="
                f"{ms(tuning.idle_in_transaction_timeout)} "
                f"-c tcp_keepalives_idle={tuning.keepalives_idle} "
                f"-c tcp_keepalives_interval={tuning.keepalives_interval} "
                f"-c tcp_keepalives_count={tuning.keepalives_count}")
    given = url.query.get("options")
    if isinstance(given, tuple):
        given = " ".join(given)
    # Later -c settings win: the URL's own options come last.
    args["options"] = settings if not given else f"{settings} {given}"
    return args


#: SQLite's page cache for a read (KiB; SQLite's default is 2,000). A listing's name filter
#: at a million tasks touches ~8 MiB of index pages, which the default cache cannot hold:
#: each read then fetches them again from the file (pages the kernel may have dropped).
#: Held only while used, and counted in the master's RSS (bench_scale prints it).
READ_CACHE_KIB = 16_384
WRITE_CACHE_KIB = 2_000  # SQLite's default: the writer's batches touch few pages again


def tune_sqlite(engine: Engine, busy_timeout: float, *, wal: bool) -> None:
    """WAL + NORMAL sync, a lock wait, BEGIN IMMEDIATE so lock conflicts show at BEGIN, and
    a bigger page cache for reads (``READ_CACHE_KIB``)."""

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
        read_only = bool(conn.get_execution_options().get("read_only"))
        # Pooled connections serve the reader and the writer in turn: each transaction sets
        # the page cache it wants (only when it changes).
        info = conn.connection.info
        if info.get("read_cache") != read_only:
            pages = READ_CACHE_KIB if read_only else WRITE_CACHE_KIB
            conn.exec_driver_sql(f"PRAGMA cache_size = -{pages}")
            info["read_cache"] = read_only
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
