"""Opening a PostgreSQL store without a PostgreSQL: URLs, connection settings, how driver
errors are classified, and the watchdog's question "does the server answer?", asked of real
sockets on 127.0.0.1 (one that answers as PostgreSQL does, one that never does, none).

The store against a real PostgreSQL is in tests/ha/ (`make ha-test`).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import make_url

from master.store import PgTuning, Store, StoreError
from master.store_faults import is_disconnect, is_transient
from master.store_open import parse_url, postgres_connect_args
from master.store_watchdog import answers, server_address

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def test_a_plain_postgresql_url_means_psycopg_3() -> None:
    assert parse_url("postgresql://u:p@db:5432/x").drivername == "postgresql+psycopg"
    assert parse_url("postgresql+psycopg://u@db/x").drivername == "postgresql+psycopg"
    assert parse_url("master.db").get_backend_name() == "sqlite"


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql+psycopg2://u:secret@db/x", "through psycopg 3"),
    ("postgresql+asyncpg://u@db/x", "through psycopg 3"),
    ("mysql+pymysql://u:secret@db/x", "SQLite or PostgreSQL, not 'mysql'"),
])
def test_other_databases_and_drivers_are_refused_clearly(url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says) as info:
        Store.open(url)
    assert "secret" not in str(info.value) and info.value.__cause__ is None


def test_connection_settings_bound_every_wait_and_the_url_wins() -> None:
    tuning = PgTuning(connect_timeout=1, statement_timeout=30, idle_in_transaction_timeout=4)
    args = postgres_connect_args(make_url("postgresql+psycopg://u@h/x"), 2.5, tuning)
    assert args["connect_timeout"] == 2  # libpq's least
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 10_000
    assert "-c statement_timeout=30000" in args["options"]
    assert "-c lock_timeout=2500" in args["options"]
    assert "-c idle_in_transaction_session_timeout=4000" in args["options"]
    given = make_url("postgresql+psycopg://u@h/x?connect_timeout=9&options=-c%20lock_timeout%3D1s")
    args = postgres_connect_args(given, 2.5, tuning)
    assert "connect_timeout" not in args  # the URL's own reaches psycopg unchanged
    assert args["options"].endswith("-c lock_timeout=1s")  # after ours: it wins


def _wrapped(orig: Exception, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError.instance("SELECT 1", {}, orig, psycopg.Error,
                                      connection_invalidated=invalidated)


@pytest.mark.parametrize(("orig", "transient", "disconnect"), [
    (psycopg.errors.LockNotAvailable(), True, False),  # 55P03: lock_timeout
    (psycopg.errors.SerializationFailure(), True, False),  # 40001
    (psycopg.errors.DeadlockDetected(), True, False),  # 40P01
    (psycopg.errors.AdminShutdown(), False, True),  # 57P01
    (psycopg.errors.CannotConnectNow(), False, True),  # 57P03: starting up
    (psycopg.errors.ConnectionFailure(), False, True),  # 08006
    (psycopg.OperationalError("connection refused"), False, True),  # no SQLSTATE
    (psycopg.errors.QueryCanceled(), False, False),  # 57014: statement_timeout
    (psycopg.errors.UniqueViolation(), False, False),  # the data's fault
])
def test_driver_errors_are_told_apart(orig: Exception, transient: bool,
                                      disconnect: bool) -> None:
    exc = _wrapped(orig)
    assert (is_transient(exc), is_disconnect(exc)) == (transient, disconnect)


def test_a_session_the_server_ended_is_a_lost_connection_whatever_its_sqlstate() -> None:
    ended = psycopg.errors.IdleInTransactionSessionTimeout()  # 25P03, FATAL
    assert not is_disconnect(_wrapped(ended))
    assert is_disconnect(_wrapped(ended, invalidated=True))
    assert not is_disconnect(sa_exc.OperationalError("x", {}, Exception("disk I/O error")))


def test_server_addresses_come_from_the_url() -> None:
    assert server_address(make_url("postgresql+psycopg://u@10.0.0.5:6543/x")) == (
        socket.AF_UNSPEC, ("10.0.0.5", 6543))
    assert server_address(make_url("postgresql+psycopg://u@db/x"))[1] == ("db", 5432)
    local = make_url("postgresql+psycopg://u@/x?host=/run/pg")
    assert server_address(local) == (socket.AF_UNIX, "/run/pg/.s.PGSQL.5432")
    several = make_url("postgresql+psycopg://u@/x?host=a,b")
    assert server_address(several) is None  # then only the hard limit applies


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A TCP listener on 127.0.0.1 whose accepted sockets the test answers, or not."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server, accepted
    stop.set()
    thread.join(5)
    server.close()
    for conn in accepted:
        conn.close()


def test_a_server_that_answers_an_ssl_request_is_alive(
        listener: tuple[socket.socket, list[socket.socket]]) -> None:
    server, accepted = listener

    def answer() -> None:
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        conn = accepted[0]
        conn.settimeout(10)
        assert conn.recv(8) == SSL_REQUEST
        conn.sendall(b"N")  # what PostgreSQL without SSL says

    helper = threading.Thread(target=answer)
    helper.start()
    assert answers((socket.AF_UNSPEC, server.getsockname()), 5.0)
    helper.join(10)


def test_a_server_that_accepts_but_never_answers_is_not_alive(
        listener: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listener  # accepted, acknowledged, never answered: a frozen server
    started = time.monotonic()
    assert not answers((socket.AF_UNSPEC, server.getsockname()), 0.3)
    assert time.monotonic() - started < 10  # bounded by the probe's timeout


def test_nobody_listening_is_not_alive(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nobody listens there
    assert not answers((socket.AF_UNSPEC, ("127.0.0.1", port)), 1.0)
    assert not answers((socket.AF_UNIX, str(tmp_path / ".s.PGSQL.5432")), 1.0)


def test_opening_a_server_that_never_answers_fails_within_the_connect_timeout(
        listener: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listener
    port = server.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError, match="did not answer in time"):
        Store.open(f"postgresql+psycopg://u:p@127.0.0.1:{port}/x",
                   postgres=PgTuning(connect_timeout=2))
    assert time.monotonic() - started < 30


def test_a_server_nobody_listens_on_gives_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError, match="connection was refused; is it running"):
        Store.open(f"postgresql+psycopg://u:p@127.0.0.1:{port}/x")
