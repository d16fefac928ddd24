"""Incoming connections cannot be exhausted or wedged (issue 12, points 7 and 8).

Attacks come from 127.0.0.2, the legitimate clients from 127.0.0.1, over real loopback
sockets to a real runtime; request deadlines run on libproc's Clock (paused and advanced
here). What a server keeps after a client leaves is read from the kernel (/proc/net/tcp).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import libproc
from cluster_harness import Cluster, cluster  # noqa: F401 - cluster is a fixture
from libproc import UPID, Clock, Process, metrics
from libproc.connections import Admission, ConnectionLimits, overdue
from libproc.inbound import Incoming
from libproc.runtime import current
from libproc.wire import BadRequest, Limits, RequestParser
from test_libproc_http import Conn, Inbox, inbox  # noqa: F401 - inbox is a fixture
from waiting import until

pytestmark = pytest.mark.timeout(60)

FLOOD = Path(__file__).parent / "peers" / "conn_flood.py"
ATTACKER = "127.0.0.2"
SENDER = "raw@127.0.0.1:1"


def _second_address_usable() -> bool:
    try:
        with socket.socket() as s:
            s.bind((ATTACKER, 0))
        return True
    except OSError:
        return False


if not _second_address_usable():  # a FAILURE, never a skip: the point needs two addresses
    raise RuntimeError(f"cannot bind {ATTACKER}: these tests need the whole 127/8 on loopback")


# -- helpers ----------------------------------------------------------------------------


def counter(name: str) -> float:
    return metrics.counters.get(f"libproc/{name}", 0)


def bodies(inbox: Inbox) -> list[bytes]:
    return [body for _, _, body in inbox.got]


def incoming() -> Incoming:
    rt = current()
    assert rt is not None
    return rt.transport.incoming


async def still_open(conn: Conn) -> bool:
    """True if the server neither closed `conn` nor sent anything on it."""
    try:
        await asyncio.wait_for(conn.reader.read(1), 0.3)
    except TimeoutError:
        return True
    except ConnectionError:
        return False
    return False


_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN",
               "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK", "0B": "CLOSING"}


def server_sockets(port: int) -> list[tuple[int, str]]:
    """The kernel's sockets whose local port is `port` (the server side): (peer port, state)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == port:
            out.append((int(remote.split(":")[1], 16), _TCP_STATES.get(state, state)))
    return out


async def nothing_left_behind(server_port: int, client_port: int) -> None:
    """Wait until the server holds no open socket (ESTABLISHED or CLOSE_WAIT) for a client."""
    def gone() -> bool:
        return all(state not in ("ESTABLISHED", "CLOSE_WAIT")
                   for peer, state in server_sockets(server_port) if peer == client_port)

    await until(gone, 10)


def message(to: str, name: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"POST /{to}/{name} HTTP/1.1\r\nLibprocess-From: {SENDER}\r\n{extra}"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
async def limited() -> AsyncIterator[Callable[[ConnectionLimits], Any]]:
    """Start a runtime with the given connection limits (and an Inbox); stop it after."""
    started = False

    async def start(limits: ConnectionLimits) -> tuple[UPID, Inbox]:
        nonlocal started
        Clock.reset()
        address = await libproc.start(host="127.0.0.1", port=0, connection_limits=limits)
        started = True
        proc = Inbox()
        libproc.spawn(proc)
        await Clock.settle()
        return address, proc

    try:
        yield start
    finally:
        if started:
            await libproc.stop()
        Clock.reset()


# -- pure rules ---------------------------------------------------------------------------


def test_admission_bounds_each_address_and_releases_slots() -> None:
    adm = Admission(ConnectionLimits(max_connections=100, max_connections_per_address=3))
    assert [adm.admit("a") for _ in range(4)] == [None, None, None, "per_address"]
    assert adm.admit("b") is None
    adm.release("a")
    assert adm.admit("a") is None
    assert (adm.total, adm.held("a"), adm.held("b"), adm.busiest()) == (4, 3, 1, 3)
    adm.release("zzz")  # never admitted: nothing changes
    assert adm.total == 4


def test_admission_keeps_the_last_quarter_for_light_addresses() -> None:
    adm = Admission(ConnectionLimits(max_connections=100, max_connections_per_address=1000))
    taken = 0
    while adm.admit("heavy") is None:
        taken += 1
    assert taken == 75  # past 3/4 a heavy address gets nothing more ...
    assert adm.admit("heavy") == "global"
    for i in range(25):  # ... but every light address still does, up to the global cap
        assert adm.admit(f"light{i}") is None
    assert adm.admit("another") == "global"


def test_overdue_counts_from_the_first_byte_and_extends_with_bytes_received() -> None:
    limits = ConnectionLimits(request_timeout=30, request_min_rate=500)
    assert not overdue(100.0, 0, 130.0, limits)
    assert overdue(100.0, 0, 130.5, limits)
    assert not overdue(100.0, 5000, 139.0, limits)  # 5000 bytes earn 10 more seconds
    assert overdue(100.0, 5000, 140.5, limits)


def test_connection_limits_fit_the_descriptor_limit_and_refuse_nonsense() -> None:
    limits = ConnectionLimits(max_connections=10_000)
    assert limits.fit_to_fd_limit(1024).max_connections == 768
    assert limits.fit_to_fd_limit(1_000_000).max_connections == 10_000
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionLimits(max_connections_per_address=0)
    with pytest.raises(ValueError, match="positive"):
        ConnectionLimits(request_timeout=0)


def test_connection_limits_come_from_the_environment_with_clear_errors() -> None:
    limits = ConnectionLimits.from_env({"LIBPROCESS_MAX_CONNECTIONS_PER_ADDRESS": "50",
                                        "LIBPROCESS_REQUEST_TIMEOUT": "2.5"})
    assert (limits.max_connections_per_address, limits.request_timeout,
            limits.max_connections) == (50, 2.5, ConnectionLimits().max_connections)
    for var, bad in [("LIBPROCESS_MAX_CONNECTIONS", "0"),
                     ("LIBPROCESS_MAX_CONNECTIONS_PER_ADDRESS", "many"),
                     ("LIBPROCESS_REQUEST_TIMEOUT", "inf")]:
        with pytest.raises(ValueError, match=f"{var}={bad!r} is not valid"):
            ConnectionLimits.from_env({var: bad})


@pytest.mark.parametrize(("framing", "status"), [
    ("Content-Length: abc\r\n\r\n", 400),
    ("Content-Length: -1\r\n\r\n", 400),
    ("Content-Length: +5\r\n\r\n", 400),
    ("Content-Length: \xb2\r\n\r\n", 400),  # "²".isdigit() is True in Python
    ("Content-Length: 99999999999999999999\r\n\r\n", 400),
    ("Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", 400),
    ("Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("Transfer-Encoding: gzip\r\n\r\n", 400),
    ("Content-Length: 11\r\n\r\n", 413),
    ("Transfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n", 413),
])
def test_bad_framing_is_a_bad_request_with_the_status_to_answer(framing: str,
                                                                 status: int) -> None:
    data = f"POST /a/b HTTP/1.1\r\nHost: x\r\n{framing}".encode("latin-1")
    with pytest.raises(BadRequest) as info:
        RequestParser(Limits(max_body=10)).feed(data)
    assert info.value.status == status
    assert info.value.request is not None and info.value.request.target == "/a/b"


def test_admission_counts_the_bytes_of_incomplete_requests() -> None:
    adm = Admission(ConnectionLimits(max_buffered_per_address=100, max_buffered=150))
    assert adm.hold("a", 60) is None
    assert adm.hold("a", 50) == "per_address"
    assert adm.hold("a", -50) is None
    assert adm.hold("b", 95) == "global"
    assert adm.hold("b", -95) is None and adm.hold("a", -60) is None
    assert adm.buffered == 0


def test_parser_reports_the_bytes_it_holds_for_an_incomplete_request() -> None:
    parser = RequestParser()
    parser.feed(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")
    assert (parser.partial, parser.held) == (True, 5)
    parser.feed(b"67890")
    assert (parser.partial, parser.held) == (False, 0)
    parser.feed(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\nde")
    assert parser.held == 3 + len(b"de")


def test_identical_repeated_content_lengths_are_one() -> None:
    parser = RequestParser()
    [req] = parser.feed(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    assert req.body == b"ok"


# -- connection limits, over real sockets -------------------------------------------------


def _expected_held(limits: ConnectionLimits, attempts: int) -> int:
    adm = Admission(limits)
    return sum(adm.admit(ATTACKER) is None for _ in range(attempts))


@pytest.mark.timeout(300)
async def test_ten_thousand_idle_connections_from_one_address_lock_out_no_one_else(
    limited: Callable[[ConnectionLimits], Any],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # room for what we hold
    want = 12_000 if hard == resource.RLIM_INFINITY else min(hard, 12_000)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    address, inbox = await limited(ConnectionLimits())
    limits = incoming().admission.limits
    attempts = 10_100
    held = _expected_held(limits, attempts)
    refused_before = counter("connections_refused_per_address") + counter(
        "connections_refused_global")
    flood = subprocess.Popen(
        [sys.executable, str(FLOOD), "127.0.0.1", str(address.port), str(attempts), ATTACKER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert flood.stdin is not None and flood.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(flood.stdout.readline), 240)
        assert line.strip() == f"OPEN {attempts}", line
        await until(lambda: counter("connections_refused_per_address")
                    + counter("connections_refused_global") - refused_before
                    == attempts - held, 60)
        assert incoming().admission.held(ATTACKER) == held

        # Clients at another address are served: HTTP and messages alike.
        client = await Conn.open(address.port)
        client.write(b"GET /metrics/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await client.response()
        snapshot = json.loads(body)
        assert status == 200
        assert (snapshot["libproc/connections_refused_per_address"]
                + snapshot.get("libproc/connections_refused_global", 0)
                - refused_before) == attempts - held
        assert snapshot["libproc/connections_inbound_busiest_address"] == held
        sender = await Conn.open(address.port)
        sender.write(message("inbox", "m", b"still served"))
        assert (await sender.response())[0] == 202
        await until(lambda: bodies(inbox) == [b"still served"])
        await client.close()
        await sender.close()

        # What the attacker sees: its first connections held, the rest answered and closed.
        flood.stdin.write("count\n")
        flood.stdin.flush()
        report = await asyncio.wait_for(asyncio.to_thread(flood.stdout.readline), 60)
        assert report.split() == ["HELD", str(held), "REFUSED", str(attempts - held)]
    finally:
        flood.stdin.close()
        await asyncio.to_thread(flood.wait, 60)
    await until(lambda: incoming().admission.held(ATTACKER) == 0, 30)


async def test_a_refused_connection_is_answered_503_with_the_reason(
    limited: Callable[[ConnectionLimits], Any],
) -> None:
    address, _ = await limited(ConnectionLimits(max_connections_per_address=2))
    held = [await Conn.open(address.port, ATTACKER) for _ in range(2)]
    await until(lambda: incoming().admission.held(ATTACKER) == 2)
    extra = await Conn.open(address.port, ATTACKER)
    status, headers, body = await extra.response()
    assert status == 503 and headers["connection"] == "close"
    assert "too many connections from 127.0.0.2" in json.loads(body)["error"]
    assert await extra.closed_without_response()
    # Another address is not affected; a slot given back is free again.
    other = await Conn.open(address.port)
    other.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await other.response())[0] == 200
    await held[0].close()
    await until(lambda: incoming().admission.held(ATTACKER) == 1)
    again = await Conn.open(address.port, ATTACKER)
    again.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await again.response())[0] == 200
    for conn in (held[1], extra, other, again):
        await conn.close()


async def test_a_runtime_takes_its_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIBPROCESS_MAX_CONNECTIONS_PER_ADDRESS", "1")
    address = await libproc.start(host="127.0.0.1", port=0)
    try:
        first = await Conn.open(address.port, ATTACKER)
        await until(lambda: incoming().admission.held(ATTACKER) == 1)
        second = await Conn.open(address.port, ATTACKER)
        assert (await second.response())[0] == 503
        assert await still_open(first)
        await first.close()
        await second.close()
    finally:
        await libproc.stop()


async def test_the_global_cap_keeps_room_for_other_addresses(
    limited: Callable[[ConnectionLimits], Any],
) -> None:
    address, _ = await limited(ConnectionLimits(max_connections=40,
                                                max_connections_per_address=1000))
    before = counter("connections_refused_global")
    heavy = [await Conn.open(address.port, ATTACKER) for _ in range(40)]
    await until(lambda: counter("connections_refused_global") - before == 10)
    assert incoming().admission.held(ATTACKER) == 30  # 3/4 of the cap, no more
    light = [await Conn.open(address.port, "127.0.0.3") for _ in range(3)]
    client = await Conn.open(address.port)
    client.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response())[0] == 200
    for conn in light:
        assert await still_open(conn)
    assert incoming().admission.held("127.0.0.3") == 3
    for conn in [*heavy, *light, client]:
        await conn.close()


# -- request deadlines ----------------------------------------------------------------------


async def _received(n: int) -> None:
    """Wait until the one request in progress has had `n` bytes since its first data."""
    await until(lambda: [c._received for c in incoming().partial] == [n])


async def test_a_slowloris_head_is_closed_after_the_request_timeout(
    runtime: UPID, inbox: Inbox
) -> None:
    Clock.pause()
    before = counter("requests_timed_out")
    slow = await Conn.open(runtime.port, ATTACKER)
    slow.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await _received(0)
    Clock.advance(25)
    for i in range(1, 5):  # trickling a byte a second does not buy time
        slow.write(b"a")
        await _received(i)
        Clock.advance(1)
    assert await still_open(slow)
    Clock.advance(2)  # 31 s after the first byte
    assert await slow.closed_without_response()
    assert counter("requests_timed_out") == before + 1
    await until(lambda: incoming().admission.held(ATTACKER) == 0)
    client = await Conn.open(runtime.port)
    client.write(b"GET /metrics/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
    snapshot = json.loads((await client.response())[2])
    assert snapshot["libproc/requests_timed_out"] == before + 1
    await client.close()


async def test_a_message_body_arriving_steadily_gets_time_for_its_bytes(
    runtime: UPID, inbox: Inbox
) -> None:
    Clock.pause()
    body = b"x" * 100_000
    data = message("inbox", "m", body)
    conn = await Conn.open(runtime.port, ATTACKER)
    head_end = data.index(b"\r\n\r\n") + 5
    conn.write(data[:head_end])
    await _received(0)
    conn.write(data[head_end:head_end + 20_000])
    await _received(20_000)
    Clock.advance(60)  # 30 s + 20,000 bytes / 500 B/s = 70 s
    assert await still_open(conn)
    Clock.advance(11)
    assert await conn.closed_without_response()
    assert bodies(inbox) == []


async def test_a_stream_of_messages_split_across_reads_is_never_timed_out(
    runtime: UPID, inbox: Inbox
) -> None:
    Clock.pause()
    before = counter("requests_timed_out")
    stream = b"".join(message("inbox", "m", b"%d" % i) for i in range(7))
    size = len(message("inbox", "m", b"0"))
    conn = await Conn.open(runtime.port)
    sent = 0
    for i in range(6):  # each write completes one message and begins the next
        upto = (i + 1) * size + size // 2
        conn.write(stream[sent:upto])
        sent = upto
        await until(lambda i=i: len(inbox.got) == i + 1)
        Clock.advance(20)  # 120 s in all, but no request is incomplete for 30
    conn.write(stream[sent:])
    statuses = [(await conn.response())[0] for _ in range(7)]
    assert statuses == [202] * 7
    await until(lambda: len(inbox.got) == 7)
    assert bodies(inbox) == [b"%d" % i for i in range(7)]
    assert counter("requests_timed_out") == before
    await conn.close()


async def test_a_linking_peer_that_never_speaks_stays_connected_for_hours(
    runtime: UPID, inbox: Inbox
) -> None:
    # C++ libprocess link(): connect, then maybe nothing for hours. Also a peer idle after a
    # message. Neither is ever closed by the receiver (DESIGN.md §2.1).
    silent = await Conn.open(runtime.port, ATTACKER)
    talked = await Conn.open(runtime.port, ATTACKER)
    talked.write(message("inbox", "m", b"hello"))
    assert (await talked.response())[0] == 202
    await until(lambda: incoming().admission.held(ATTACKER) == 2)
    Clock.pause()
    for _ in range(6):
        Clock.advance(1800)
        await asyncio.sleep(0.05)
    assert await still_open(silent)
    assert await still_open(talked)
    assert incoming().admission.held(ATTACKER) == 2
    silent.write(message("inbox", "m", b"at last"))
    talked.write(message("inbox", "m", b"again"))
    assert (await silent.response())[0] == 202
    assert (await talked.response())[0] == 202
    await until(lambda: len(inbox.got) == 3)
    await silent.close()
    await talked.close()


async def test_an_incomplete_request_after_a_get_is_timed_out_too(
    runtime: UPID, inbox: Inbox
) -> None:
    Clock.pause()
    conn = await Conn.open(runtime.port, ATTACKER)
    conn.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\nGET /inbox/text HTTP/1.1\r\n")
    assert (await conn.response())[0] == 200
    await _received(0)
    Clock.advance(31)
    assert await conn.closed_without_response()


# -- the HTTP path: bad framing is answered and closed -------------------------------------


BAD_FRAMINGS = {
    "non-numeric": "Content-Length: abc\r\n\r\n",
    "negative": "Content-Length: -1\r\n\r\n",
    "huge": "Content-Length: 99999999999999999999\r\n\r\n",
    "conflicting": "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "chunk 2^64-1": "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
    "chunk not hex": "Transfer-Encoding: chunked\r\n\r\n-5\r\n",
}


@pytest.mark.parametrize("after_get", [False, True], ids=["first", "after-get"])
@pytest.mark.parametrize("framing", list(BAD_FRAMINGS), ids=list(BAD_FRAMINGS))
async def test_bad_framing_on_the_http_path_is_400_then_closed_leaving_no_socket(
    runtime: UPID, inbox: Inbox, framing: str, after_get: bool
) -> None:
    conn = await Conn.open(runtime.port, ATTACKER)
    bad = f"POST /inbox/upload HTTP/1.1\r\nHost: x\r\n{BAD_FRAMINGS[framing]}".encode()
    conn.write((b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n" if after_get else b"") + bad)
    if after_get:
        assert (await conn.response())[:3:2] == (200, b"plain text\n")
    status, headers, body = await conn.response()
    assert status == 400
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]
    assert await conn.closed_without_response()
    await conn.close()
    await nothing_left_behind(runtime.port, conn.local_port)
    assert incoming().admission.held(ATTACKER) == 0


async def test_a_client_that_leaves_after_bad_framing_leaves_nothing_behind(
    runtime: UPID, inbox: Inbox
) -> None:
    conns = []
    for framing in BAD_FRAMINGS.values():
        conn = await Conn.open(runtime.port, ATTACKER)
        conn.write(f"GET /inbox/text HTTP/1.1\r\nHost: x\r\n{framing}".encode())
        await conn.close()  # gone before reading anything
        conns.append(conn)
    for conn in conns:
        await nothing_left_behind(runtime.port, conn.local_port)
    await until(lambda: incoming().admission.held(ATTACKER) == 0)


@pytest.mark.parametrize("framing", list(BAD_FRAMINGS), ids=list(BAD_FRAMINGS))
async def test_bad_framing_of_a_message_closes_without_a_response(
    runtime: UPID, inbox: Inbox, framing: str
) -> None:
    conn = await Conn.open(runtime.port, ATTACKER)
    conn.write(message("inbox", "m", b"ok") + f"POST /inbox/m HTTP/1.1\r\nLibprocess-From: "
               f"{SENDER}\r\n{BAD_FRAMINGS[framing]}".encode())
    assert (await conn.response())[0] == 202  # the good one first (DESIGN.md §2.1)
    assert await conn.closed_without_response()
    await conn.close()
    await nothing_left_behind(runtime.port, conn.local_port)
    assert bodies(inbox) == [b"ok"]


async def test_a_get_with_a_bad_header_line_is_400_and_a_post_closes_silently(
    runtime: UPID, inbox: Inbox
) -> None:
    get = await Conn.open(runtime.port)
    get.write(b"GET /inbox/text HTTP/1.1\r\nno colon here\r\n\r\n")
    status, _, body = await get.response()
    assert status == 400 and "bad header line" in json.loads(body)["error"]
    assert await get.closed_without_response()
    post = await Conn.open(runtime.port)  # may be a message: libprocess closes, says nothing
    post.write(b"POST /inbox/m HTTP/1.1\r\nno colon here\r\n\r\n")
    assert await post.closed_without_response()
    await get.close()
    await post.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_answered_413_not_reset(
    runtime: UPID, inbox: Inbox, chunked: bool
) -> None:
    # The client sends all of it before reading, as urllib and requests do.
    cap = Limits().max_http_body
    conn = await Conn.open(runtime.port, ATTACKER)
    body = b"x" * (cap + 1024 * 1024)
    if chunked:
        conn.write(b"POST /inbox/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"\r\n" + b"".join(b"100000\r\n" + body[i:i + 0x100000] + b"\r\n"
                                      for i in range(0, len(body), 0x100000)))
    else:
        conn.write(b"POST /inbox/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % len(body) + body)
    await asyncio.wait_for(conn.writer.drain(), 30)
    status, headers, answer = await conn.response()
    assert status == 413 and headers["connection"] == "close"
    assert "too large" in json.loads(answer)["error"]
    assert await conn.closed_without_response()
    await conn.close()
    await nothing_left_behind(runtime.port, conn.local_port)


class Strict(Process):
    """Routes that raise aiohttp's HTTP exceptions."""

    def __init__(self) -> None:
        super().__init__("strict")

    def initialize(self) -> None:
        self.route("/forbidden", self._forbidden)
        self.route("/moved", self._moved)

    def _forbidden(self, request: Any) -> None:
        raise web.HTTPForbidden(text="not yours")

    def _moved(self, request: Any) -> None:
        raise web.HTTPFound("/strict/forbidden")


async def test_a_route_raising_an_http_error_answers_json_with_its_status(
    runtime: UPID,
) -> None:
    libproc.spawn(Strict())
    await Clock.settle()
    conn = await Conn.open(runtime.port)
    conn.write(b"GET /strict/forbidden HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await conn.response()
    assert (status, json.loads(body)) == (403, {"error": "not yours"})
    conn.write(b"GET /strict/moved HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await conn.response()
    assert (status, headers["location"]) == (302, "/strict/forbidden")
    await conn.close()


@pytest.mark.parametrize("after_get", [False, True], ids=["first", "after-get"])
async def test_a_message_keeps_the_larger_message_cap(
    runtime: UPID, inbox: Inbox, after_get: bool
) -> None:
    body = b"m" * (2 * Limits().max_http_body)
    conn = await Conn.open(runtime.port)
    conn.write((b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n" if after_get else b"")
               + message("inbox", "m", body))
    if after_get:
        assert (await conn.response())[0] == 200
    assert (await conn.response())[0] == 202
    await until(lambda: bodies(inbox) == [body])
    too_big = message("inbox", "m", extra=f"Content-Length: {Limits().max_body + 1}\r\n")
    conn.write(too_big.replace(b"Content-Length: 0\r\n", b""))
    if after_get:  # on a handed-over connection: the HTTP path's answer
        assert (await conn.response())[0] == 413
    assert await conn.closed_without_response()
    await conn.close()


async def test_incomplete_requests_from_one_address_cannot_hold_unbounded_memory(
    limited: Callable[[ConnectionLimits], Any],
) -> None:
    address, inbox = await limited(ConnectionLimits(max_buffered_per_address=1024 * 1024))
    before = counter("requests_over_budget")
    head = message("inbox", "m", extra=f"Content-Length: {4 * 1024 * 1024}\r\n").replace(
        b"Content-Length: 0\r\n", b"")
    hogs = []
    for _ in range(3):  # each holds 400 KiB of a body it never finishes
        hog = await Conn.open(address.port, ATTACKER)
        hog.write(head + b"h" * 400 * 1024)
        hogs.append(hog)
        await until(lambda: counter("requests_over_budget") > before
                    or incoming().admission.buffered >= 400 * 1024 * len(hogs))
    assert counter("requests_over_budget") == before + 1
    assert await still_open(hogs[0]) and await still_open(hogs[1])
    assert await hogs[2].closed_without_response()
    # Another address still gets its large message through.
    client = await Conn.open(address.port)
    client.write(message("inbox", "m", b"c" * 600 * 1024))
    assert (await client.response())[0] == 202
    await until(lambda: len(inbox.got) == 1)
    for conn in [*hogs, client]:
        await conn.close()
    await until(lambda: incoming().admission.buffered == 0)


async def test_a_peer_cannot_forge_the_transports_refusal_header(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\nX-Libproc-Refused: 400 forged\r\n\r\n")
    assert (await conn.response())[:3:2] == (200, b"plain text\n")
    assert await still_open(conn)
    await conn.close()


# -- the same on a real master and slave ---------------------------------------------------


def _bad_requests() -> list[tuple[bytes, int]]:
    over = Limits().max_body + 1
    return [(f"POST /master/tasks HTTP/1.1\r\nHost: x\r\n{f}".encode(), 400)
            for f in BAD_FRAMINGS.values()] + [
        (b"POST /master/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % over, 413),
    ]


@pytest.mark.timeout(120)
async def test_master_and_slave_answer_bad_framing_and_keep_no_socket(
    cluster: Cluster,  # noqa: F811 - the fixture
) -> None:
    cluster.start_master()
    slave = cluster.start_slave()
    for port in (cluster.master_port, slave.port):
        leftovers = []
        for data, status in _bad_requests():
            conn = await Conn.open(port, ATTACKER)
            conn.write(data)
            assert (await conn.response())[0] == status
            assert await conn.closed_without_response()
            await conn.close()
            leftovers.append(conn.local_port)
        bad = _bad_requests()
        for i in range(50):  # and clients that leave without reading
            conn = await Conn.open(port, ATTACKER)
            conn.write(bad[i % len(bad)][0])
            await conn.close()
            leftovers.append(conn.local_port)
        for client_port in leftovers:
            await nothing_left_behind(port, client_port)
        assert not [s for s in server_sockets(port) if s[1] == "CLOSE_WAIT"]
    assert cluster.api.vars()["version"]  # the master still serves
