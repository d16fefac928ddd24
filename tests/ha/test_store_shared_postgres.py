"""tests/test_store_shared.py's tests (several stores on one database) against the private
PostgreSQL: where READ COMMITTED let two stores hand out one id twice, collide on an
upsert's primary key, or both create the tables of an empty database."""

from __future__ import annotations

import pytest
from portable import portable_tests

import test_store_shared
from test_store_shared import stores  # noqa: F401 - the fixture, on this module's `db`

globals().update(portable_tests(test_store_shared, {}))


def test_every_shared_database_test_runs_here() -> None:
    names = {n for n in vars(test_store_shared) if n.startswith("test_")}
    assert set(portable_tests(test_store_shared, {})) == names


@pytest.fixture
def db(pg_url: str) -> str:
    return pg_url
