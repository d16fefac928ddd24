"""The private servers themselves (tests/ha_servers.py): loopback only, restartable, removed."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from zk_helpers import client

from ha_servers import (
    PostgresServer,
    ZooKeeperServer,
    missing_prerequisites,
    process_tree,
    still_alive,
)


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return True
    return False


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_every_prerequisite_is_installed() -> None:
    assert missing_prerequisites() == []


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_zookeeper_restarts_on_its_port_with_its_data(
        own_zookeeper: ZooKeeperServer, how: str) -> None:
    assert "Mode: standalone" in own_zookeeper.four_letter("srvr")
    assert own_zookeeper.four_letter("ruok") == "imok"
    assert _refused("127.0.0.2", own_zookeeper.port)  # bound to 127.0.0.1 only
    zk = client(own_zookeeper.hosts)
    try:
        zk.create("/kept", b"across restarts")
    finally:
        zk.stop()
    own_zookeeper.stop() if how == "stop" else own_zookeeper.kill()
    assert _refused("127.0.0.1", own_zookeeper.port)
    own_zookeeper.start()
    zk = client(own_zookeeper.hosts)
    try:
        assert zk.get("/kept")[0] == b"across restarts"
    finally:
        zk.stop()
    assert own_zookeeper.starts == 2


def test_zookeeper_close_stops_it_and_removes_its_directory() -> None:
    server = ZooKeeperServer().start()
    pid, base = server.popen.pid, server.base  # type: ignore[union-attr]
    server.close()
    assert not base.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert _refused("127.0.0.1", server.port)


def test_postgres_runs_unprivileged_on_loopback_with_a_password(
        postgres: PostgresServer) -> None:
    assert postgres.popen is not None
    assert os.geteuid() != 0 or _uid(postgres.popen.pid) != 0
    assert _refused("127.0.0.2", postgres.port)
    engine = sa.create_engine(postgres.url())
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT inet_server_port()")).scalar() == postgres.port
            assert int(conn.execute(sa.text("SHOW server_version_num")).scalar() or 0) >= 120000
    finally:
        engine.dispose()
    wrong = postgres.conninfo().replace(postgres.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong).close()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_postgres_restarts_on_its_port_with_its_data(
        own_postgres: PostgresServer, how: str) -> None:
    url = own_postgres.create_database("kept")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x integer)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
        engine.dispose()
        own_postgres.stop() if how == "stop" else own_postgres.kill()
        assert _refused("127.0.0.1", own_postgres.port)
        own_postgres.start()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT sum(x) FROM t")).scalar() == 3
    finally:
        engine.dispose()


def test_postgres_close_stops_every_process_and_removes_its_directory() -> None:
    server = PostgresServer().start()
    assert server.popen is not None
    base, processes = server.base, process_tree(server.popen.pid)
    assert len(processes) >= 4  # the postmaster, its checkpointer, writers, launcher...
    server.close()
    assert not base.exists()
    assert _refused("127.0.0.1", server.port)
    assert still_alive(processes) == []


def test_a_killed_postgres_leaves_no_backend_behind(own_postgres: PostgresServer) -> None:
    conn = psycopg.connect(own_postgres.conninfo(), autocommit=True)
    try:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None and own_postgres.popen is not None
        processes = process_tree(own_postgres.popen.pid)
        assert backend[0] in processes
        own_postgres.kill()
        assert still_alive(processes) == []
    finally:
        conn.close()


def test_a_frozen_postgres_answers_nothing_until_thawed(own_postgres: PostgresServer) -> None:
    answers: list[object] = []
    with psycopg.connect(own_postgres.conninfo(), autocommit=True) as conn:
        own_postgres.freeze()
        try:
            query = threading.Thread(target=lambda: answers.append(
                conn.execute("SELECT 1").fetchone()))
            query.start()
            query.join(1.0)
            assert query.is_alive() and answers == []  # sent, and no answer
        finally:
            own_postgres.thaw()
        query.join(30)
    assert answers == [(1,)]
