"""Fixtures of the HA tests: private ZooKeeper and PostgreSQL servers (tests/ha_servers.py).

`make ha-test` installs the servers (scripts/ha-local.sh) and runs `pytest tests/ha`; a bare
`pytest` leaves this directory out (`norecursedirs`). A missing prerequisite FAILS every
test that needs it, with what to install, under CI=true or not: these tests are only run
when asked for, so a skip would only hide that they did not run.

Shared servers (`zookeeper`, `postgres`) live for the whole session; each test gets its own
znode path (`zk_url`) or database (`pg_url`). Tests that stop, kill or freeze a server take
their own (`own_zookeeper`, `own_postgres`). Every server is stopped and its directory
removed at the end, on failure too.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cluster_harness import Cluster
from ha_servers import PostgresServer, ZooKeeperServer, missing_prerequisites

if TYPE_CHECKING:
    from ha_cluster import HaCluster

# Short, so that expiry and failover tests run in seconds; long enough for a loaded machine
# (kazoo pings every third of it).
SESSION_TIMEOUT = 3.0
_counter = itertools.count(1)


def _require() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("HA test prerequisites are missing: " + "; ".join(missing)
                    + ". Install them with: sudo bash scripts/ha-local.sh (make ha-test does)",
                    pytrace=False)


def _serve(server: ZooKeeperServer | PostgresServer) -> Iterator[Any]:
    _require()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeperServer]:
    """One private ZooKeeper for the session's tests (each uses its own path)."""
    yield from _serve(ZooKeeperServer())


@pytest.fixture
def own_zookeeper() -> Iterator[ZooKeeperServer]:
    """A private ZooKeeper for one test, which may stop, kill or restart it."""
    yield from _serve(ZooKeeperServer())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the session's tests (each uses its own database)."""
    yield from _serve(PostgresServer())


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL for one test, which may stop, kill or restart it."""
    yield from _serve(PostgresServer())


def _unique(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    return f"{name}_{next(_counter)}"


@pytest.fixture
def zk_url(zookeeper: ZooKeeperServer, request: pytest.FixtureRequest) -> str:
    """`zk://127.0.0.1:PORT/ha/<test>`: a path no other test uses."""
    return zookeeper.url(f"/ha/{_unique(request)}")


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """`postgresql+psycopg://…/<test>`: a fresh, empty database for this test."""
    return postgres.create_database(_unique(request))


@pytest.fixture
def ha(tmp_path: Path, zk_url: str, pg_url: str) -> Iterator[HaCluster]:
    """Masters and slaves on the shared servers, under this test's path and database;
    every child is ended at the end (its logs printed when the test fails)."""
    from ha_cluster import HaCluster

    cluster = Cluster(tmp_path / "cluster")
    try:
        yield HaCluster(cluster, zk_url, pg_url)
    finally:
        cluster.close()
        print(cluster.logs())
