"""tests/test_store_fencing.py's tests (every one) against the private PostgreSQL, where
the epoch check is a `SELECT … FOR SHARE` and a claim's row lock orders the two."""

from __future__ import annotations

import pytest
from portable import portable_tests

import test_store_fencing
from test_store_fencing import stores  # noqa: F401 - the fixture, on this module's `db`

globals().update(portable_tests(test_store_fencing, {}))


def test_every_fencing_test_runs_here() -> None:
    names = {n for n in vars(test_store_fencing) if n.startswith("test_")}
    assert set(portable_tests(test_store_fencing, {})) == names


@pytest.fixture
def db(pg_url: str) -> str:
    return pg_url
