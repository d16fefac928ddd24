"""What can go wrong with the master's database, and how the store tells the cases apart.

Three answers a write can get besides success, as exceptions (all ``StoreError``):

- ``StoreUnavailable``: the *database* cannot take writes now — its file was removed,
  replaced, moved or made read-only, it stayed locked, the disk failed, its server cannot be
  reached or stopped answering. Nothing of the write is known to be stored; the same write
  may succeed later, so callers retry it (and answer their clients 503).
- ``RecordRefused``: the database refuses *this request's data* (a value it cannot bind, a
  constraint); retrying the same data fails again. Only that request fails: the store
  isolates it, and the other requests of its batch are committed.
- ``StoreFenced``: another master claimed leadership after this store did
  (``Store.claim_leadership``); nothing of the write was stored, and no write of this store
  will be until it claims again. Never retried: the caller must step down.

How a driver error is classified: ``is_transient`` (someone else's lock, a conflict: the
same transaction is tried again, up to ``max_lock_wait``), ``is_disconnect`` (the connection
to a PostgreSQL server failed or could not be made: tried again on a new connection for a
short while, but never once the COMMIT was sent, whose outcome is then unknown), else
``is_database_fault`` (the database is unusable now) or, failing all three, the request's data.

``FileGuard`` answers "is the SQLite file this store opened still at its path, and
writable?". SQLite writes through its open descriptor, so a file renamed, removed or replaced
under it takes every commit "successfully" into a file the next master will never see, and
as root it writes into a file whose mode forbids writing. The store asks before and after
each commit, and fails the batch when the answer is not None.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import sqlalchemy.exc as sa_exc

__all__ = ["StoreError", "StoreUnavailable", "RecordRefused", "StoreFenced", "FileGuard",
           "Health", "db_message", "sqlstate", "is_transient", "is_disconnect",
           "is_database_fault"]

log = logging.getLogger("master.store")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class StoreUnavailable(StoreError):
    """The database cannot take writes now; nothing of this one is known to be stored."""


class RecordRefused(StoreError):
    """The database refuses this request's data; the rest of its batch was committed."""


class StoreFenced(StoreError):
    """Another master claimed a newer leader epoch; this store's writes are refused."""


def db_message(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc)


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a driver error (None for SQLite and client-side errors)."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


# serialization_failure, deadlock_detected, lock_not_available (lock_timeout expired)
_TRANSIENT = frozenset({"40001", "40P01", "55P03"})
# admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down, recovery)
_GONE = frozenset({"57P01", "57P02", "57P03"})


def is_transient(exc: BaseException) -> bool:
    """A lock held by someone else, a serialization conflict or deadlock, a lock wait that
    timed out: the same transaction is worth trying again."""
    return "is locked" in db_message(exc) or sqlstate(exc) in _TRANSIENT


def is_disconnect(exc: BaseException) -> bool:
    """The connection to the database server broke, or none could be made (refused, timed
    out, the server shutting down or starting up): a new connection may work.

    SQLite has no connection to lose: its errors are never disconnects."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True  # e.g. the server ended the session (idle in transaction too long)
    code = sqlstate(exc)
    if code is not None:
        return code.startswith("08") or code in _GONE
    # psycopg's client-side errors (no SQLSTATE: the server never answered) while connecting
    return isinstance(exc, sa_exc.OperationalError) and hasattr(exc.orig, "sqlstate")


def is_database_fault(exc: BaseException) -> bool:
    """The database or its connection failed (I/O, disk full, read-only, gone, corrupt), as
    opposed to one request's data being refused (a binding or constraint error)."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError,
                        sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return type(exc) is sa_exc.DatabaseError  # e.g. "file is not a database"


class FileGuard:
    """The identity (st_dev, st_ino) of a SQLite file at open, checked against its path."""

    def __init__(self, path: Path) -> None:
        st = os.stat(path)
        self.path = path
        self._identity = (st.st_dev, st.st_ino)

    def check(self) -> str | None:
        """None while the file at ``path`` is the one opened and writable; else why not.

        One ``stat``: cheap enough before and after every commit, from any thread.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (f"database file {self.path} is gone (removed or moved away); put it "
                    "back, or restart the master to start a new database there")
        except OSError as exc:
            return f"database file {self.path} cannot be checked: {exc.strerror or exc}"
        if (st.st_dev, st.st_ino) != self._identity:
            return (f"database file {self.path} was replaced by another file, not the one "
                    "this master opened; put the original back, or restart the master")
        if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(
                self.path, os.W_OK):
            return (f"database file {self.path} is read-only (mode "
                    f"{stat.filemode(st.st_mode)}); make it writable again (chmod u+w)")
        return None


class Health:
    """The store's verdict on its database: ``reason`` is None while it takes writes.

    Changed by the store's writer thread only (read from any thread). One log line when a
    fault starts (or its reason changes) and one when it clears: never one per failed write.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.reason: str | None = None
        self.faults = 0  #: how many times the database went from usable to not
        self._since = 0.0

    def fault(self, reason: str) -> None:
        if self.reason == reason:
            return
        if self.reason is None:
            self.faults += 1
            self._since = time.monotonic()
            log.error("database %s cannot take writes: %s. Writes fail (HTTP 503) until "
                      "this is fixed; they resume by themselves", self.where, reason)
        else:
            log.error("database %s still cannot take writes, now: %s", self.where, reason)
        self.reason = reason

    def clear(self) -> bool:
        """Back to healthy; True if it was faulted."""
        if self.reason is None:
            return False
        log.warning("database %s takes writes again, after %.1f s (was: %s)", self.where,
                    time.monotonic() - self._since, self.reason)
        self.reason = None
        return True
