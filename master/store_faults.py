"""What can go wrong with the master's database, and how the store tells the cases apart.

Three answers a write can get besides success, as exceptions (all ``StoreError``):

- ``StoreUnavailable``: the *database* cannot take writes now — its file was removed,
  replaced, moved or made read-only, it stayed locked, the disk failed. Nothing of the write
  is known to be stored; the same write may succeed later, so callers retry it (and answer
  their clients 503).
- ``RecordRefused``: the database refuses *this request's data* (a value it cannot bind, a
  constraint); retrying the same data fails again. Only that request fails: the store
  isolates it, and the other requests of its batch are committed.

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

__all__ = ["StoreError", "StoreUnavailable", "RecordRefused", "FileGuard", "Health",
           "db_message", "is_transient", "is_database_fault"]

log = logging.getLogger("master.store")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class StoreUnavailable(StoreError):
    """The database cannot take writes now; nothing of this one is known to be stored."""


class RecordRefused(StoreError):
    """The database refuses this request's data; the rest of its batch was committed."""


def db_message(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc)


def is_transient(exc: BaseException) -> bool:
    """A lock held by someone else, or a serialization conflict: worth trying again."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return "is locked" in db_message(exc) or code in ("40001", "40P01")


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
