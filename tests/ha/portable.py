"""Run a SQLite store test module's tests against the private PostgreSQL as they are.

A module under tests/ha/ imports `portable_tests(module, SQLITE_ONLY)` into its globals and
defines a `db` fixture giving a fresh database's URL (and `store`, if the tests use it): every
test of `module` that takes `db` or `store` then runs here, except those named SQLite-only
(each with its reason). So a store test added later runs on both databases without anyone
listing it here; the tests read the database through `store_peek`, which takes a URL.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any


def portable_tests(module: ModuleType, sqlite_only: dict[str, str]) -> dict[str, Any]:
    """The tests of `module` that take the `db` or `store` fixture, minus `sqlite_only`."""
    missing = set(sqlite_only) - set(vars(module))
    if missing:
        raise AssertionError(f"{module.__name__}: SQLITE_ONLY names tests that no longer "
                             f"exist: {sorted(missing)}")
    found = {}
    for name, item in vars(module).items():
        if not name.startswith("test_") or name in sqlite_only or not callable(item):
            continue
        parameters = inspect.signature(item).parameters
        if {"db", "store", "stores"} & set(parameters):
            found[name] = item
    return found
