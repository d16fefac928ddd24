"""The receiving side over real loopback sockets, driven by a raw-socket client written here
(no libproc on the client side): routes, built-in endpoints, and DESIGN.md §2.1's receiver
rules (202/404/400/500, framings, hand-over to aiohttp, bad peers)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock, Future, Process, ProtobufProcess, metrics
from protos import cluster_pb2 as pb

pytestmark = pytest.mark.timeout(30)

SENDER = "raw@127.0.0.1:1"


@pytest.fixture
async def delegated_runtime() -> AsyncIterator[UPID]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0, delegate="boss")
    try:
        yield address
    finally:
        await libproc.stop()
        Clock.reset()


# -- a raw HTTP client ----------------------------------------------------------------


class Conn:
    """One raw TCP connection: write bytes, read HTTP responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.local_port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Conn:
        """Connect to 127.0.0.1:`port` from the address `source` (any of 127/8)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if line)
        }
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), 5
            )
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5), 16)
                body += await asyncio.wait_for(self.reader.readexactly(size + 2), 5)
                if size == 0:
                    break
            body = body[:-2]
        else:
            body = b""
        return status, headers, body

    async def closed_without_response(self) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), 5)
        except ConnectionResetError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = await Conn.open(port)
    try:
        conn.write(data)
        return await conn.response()
    finally:
        await conn.close()


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def message(
    to: str,
    name: str,
    body: bytes = b"",
    *,
    sender: str = SENDER,
    chunked: bool = True,
    version: str = "HTTP/1.1",
    extra: str = "",
) -> bytes:
    head = f"POST /{to}/{name} {version}\r\nLibprocess-From: {sender}\r\n{extra}"
    if chunked and body:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + (
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Inbox(Process):
    """Records messages; serves a few routes."""

    def __init__(self, id: str = "inbox") -> None:  # noqa: A002
        super().__init__(id)
        self.got: list[tuple[str, UPID, bytes]] = []
        self.arrived = asyncio.Event()

    def initialize(self) -> None:
        for name in ("m", "n", "a/b", "cluster.ReportProgressMessage"):
            self.install(name, lambda s, b, n=name: self._got(n, s, b))
        self.route("/text", lambda r: "plain text\n")
        self.route("/json", lambda r: {"answer": 42})
        self.route("/bytes", lambda r: b"\x00\x01")
        self.route("/none", lambda r: None)
        self.route("/future", lambda r: Future.ready({"from": "future"}))
        self.route("/async", self._async_route)
        self.route("/", lambda r: "catch-all")
        self.route("/deep/er", lambda r: f"deeper:{r.path}")
        self.route("/boom", self._boom)
        self.route("/upload", self._upload)

    def _got(self, name: str, sender: UPID, body: bytes) -> None:
        self.got.append((name, sender, body))
        self.arrived.set()

    async def _async_route(self, request: Any) -> str:
        await asyncio.sleep(0)
        return f"async {request.method}"

    def _boom(self, request: Any) -> None:
        raise RuntimeError("route bug")

    async def _upload(self, request: Any) -> dict[str, int]:
        return {"size": len(await request.read())}  # aiohttp caps a body it reads at 1 MiB

    async def wait_for(self, n: int) -> None:
        async def loop() -> None:
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(loop(), 5)


@pytest.fixture
async def inbox(runtime: UPID) -> Inbox:
    proc = Inbox()
    libproc.spawn(proc)
    await Clock.settle()
    return proc


# -- routes ---------------------------------------------------------------------------


async def test_route_is_served_at_id_and_path(runtime: UPID, inbox: Inbox) -> None:
    status, headers, body = await get(runtime.port, "/inbox/text")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert body == b"plain text\n"


@pytest.mark.parametrize(
    ("path", "ctype", "body"),
    [
        ("/inbox/json", "application/json", b'{"answer": 42}'),
        ("/inbox/bytes", "application/octet-stream", b"\x00\x01"),
        ("/inbox/none", None, b""),
        ("/inbox/future", "application/json", b'{"from": "future"}'),
        ("/inbox/async", "text/plain", b"async GET"),
    ],
)
async def test_route_results_become_responses(
    runtime: UPID, inbox: Inbox, path: str, ctype: str | None, body: bytes
) -> None:
    status, headers, got = await get(runtime.port, path)
    assert status == 200
    if ctype:
        assert headers["content-type"].startswith(ctype)
    assert got == body


async def test_longest_prefix_route_wins(runtime: UPID, inbox: Inbox) -> None:
    assert (await get(runtime.port, "/inbox/deep/er/still"))[2] == b"deeper:/inbox/deep/er/still"
    assert (await get(runtime.port, "/inbox/deep"))[2] == b"catch-all"
    assert (await get(runtime.port, "/inbox/textual"))[2] == b"catch-all"  # not a segment prefix
    assert (await get(runtime.port, "/inbox"))[2] == b"catch-all"


async def test_query_string_is_ignored_for_routes(runtime: UPID, inbox: Inbox) -> None:
    assert (await get(runtime.port, "/inbox/text?x=1&y=%20"))[2] == b"plain text\n"


async def test_percent_encoded_id_reaches_the_process(runtime: UPID) -> None:
    class Slave(Process):
        def initialize(self) -> None:
            self.route("/vars", lambda r: "slave vars")

    libproc.spawn(Slave("slave(1)"))
    assert (await get(runtime.port, "/slave%281%29/vars"))[2] == b"slave vars"
    assert (await get(runtime.port, "/slave(1)/vars"))[2] == b"slave vars"


async def test_unknown_process_and_unknown_route_are_404_json(runtime: UPID) -> None:
    class NoRoutes(Process):
        pass

    libproc.spawn(NoRoutes("bare"))
    for path in ("/nobody/vars", "/bare/vars"):
        status, headers, body = await get(runtime.port, path)
        assert status == 404
        assert headers["content-type"].startswith("application/json")
        assert "error" in json.loads(body)


async def test_route_that_raises_is_500_json_and_the_process_lives_on(
    runtime: UPID, inbox: Inbox
) -> None:
    status, _, body = await get(runtime.port, "/inbox/boom")
    assert status == 500
    assert "route bug" in json.loads(body)["error"]
    assert (await get(runtime.port, "/inbox/text"))[0] == 200


async def test_route_awaiting_a_dispatch_to_its_own_process_is_500_not_a_hang(
    runtime: UPID,
) -> None:
    class Selfish(Process):
        def initialize(self) -> None:
            self.route("/self", self._self)

        async def _self(self, request: Any) -> str:
            return str(await libproc.dispatch(self.pid, lambda: "unreachable"))

    libproc.spawn(Selfish("selfish"))
    status, _, body = await get(runtime.port, "/selfish/self")
    assert status == 500
    assert "awaited a dispatch to itself" in json.loads(body)["error"]


async def test_route_waits_its_turn_in_the_mailbox(runtime: UPID, inbox: Inbox) -> None:
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    pending = asyncio.ensure_future(get(runtime.port, "/inbox/text"))
    await asyncio.sleep(0.05)
    assert not pending.done()
    gate.set()
    assert (await asyncio.wait_for(pending, 5))[0] == 200


async def test_route_request_pending_when_its_process_terminates_is_503(
    runtime: UPID, inbox: Inbox
) -> None:
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    pending = asyncio.ensure_future(get(runtime.port, "/inbox/text"))
    await asyncio.sleep(0.05)
    libproc.terminate(inbox.pid)  # inject: the queued request is dropped
    gate.set()
    status, _, body = await asyncio.wait_for(pending, 5)
    assert status == 503
    assert "terminated before serving" in json.loads(body)["error"]


async def test_route_request_to_a_terminating_process_is_503_with_retry_after(
    runtime: UPID, inbox: Inbox
) -> None:
    """A process being terminated may be replaced by one of the same id in a moment (a
    master stepping down): its routes answer 'retry', never a 404's 'no such endpoint'."""
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    await Clock.settle(max_rounds=20)
    libproc.terminate(inbox.pid, inject=False)
    try:
        status, headers, body = await get(runtime.port, "/inbox/text")
        assert status == 503 and headers["retry-after"] == "1"
        assert "is terminating" in json.loads(body)["error"]
    finally:
        gate.set()
    await libproc.wait(inbox.pid)
    assert (await get(runtime.port, "/inbox/text"))[0] == 404  # gone for good: 404


async def test_while_the_runtime_stops_requests_no_process_takes_are_503(
    runtime: UPID, inbox: Inbox
) -> None:
    """During libproc.stop() a request for a process already gone (or never there) is told
    to retry (503 + Retry-After), not that nothing serves it: the whole server is going and
    a client following a leader should look again, not give up on a 404."""
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    await Clock.settle(max_rounds=20)
    stopping = asyncio.ensure_future(libproc.stop(timeout=30))
    try:
        await asyncio.sleep(0.05)
        for path in ("/nosuch/endpoint", "/inbox/text"):
            status, headers, body = await get(runtime.port, path)
            assert (status, headers["retry-after"]) == (503, "1"), (path, status, body)
            assert "error" in json.loads(body)
    finally:
        gate.set()
        await stopping


async def test_delegate_serves_unprefixed_paths(delegated_runtime: UPID) -> None:
    class Boss(Process):
        def initialize(self) -> None:
            self.route("/vars", lambda r: "boss vars")

    libproc.spawn(Boss("boss"))
    port = delegated_runtime.port
    assert (await get(port, "/vars"))[2] == b"boss vars"
    assert (await get(port, "/boss/vars"))[2] == b"boss vars"
    assert (await get(port, "/nothing"))[0] == 404


async def test_http_1_0_get_without_host_is_served(runtime: UPID, inbox: Inbox) -> None:
    status, _, body = await request(runtime.port, b"GET /inbox/text HTTP/1.0\r\n\r\n")
    assert (status, body) == (200, b"plain text\n")


# -- built-in endpoints ---------------------------------------------------------------


async def test_processes_endpoint_lists_processes_and_queued_events(
    runtime: UPID, inbox: Inbox
) -> None:
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    await Clock.settle(max_rounds=20)
    inbox.send(inbox.pid, "m", b"queued")
    libproc.dispatch(inbox.pid, lambda: None)
    status, _, body = await get(runtime.port, "/__processes__")
    gate.set()
    assert status == 200
    (entry,) = [p for p in json.loads(body) if p["id"] == "inbox"]
    assert entry["pid"] == str(inbox.pid)
    assert entry["events"] == [{"type": "MESSAGE", "name": "m"}, {"type": "DISPATCH"}]


async def test_metrics_snapshot_reports_counters(runtime: UPID, inbox: Inbox) -> None:
    assert (await request(runtime.port, message("inbox", "m", b"x")))[0] == 202
    status, headers, body = await get(runtime.port, "/metrics/snapshot")
    snap = json.loads(body)
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert snap["libproc/processes"] == 1
    assert snap["libproc/messages_received"] >= 1


async def test_health_endpoint_is_healthy(runtime: UPID) -> None:
    status, _, body = await get(runtime.port, "/health")
    assert status == 200
    assert json.loads(body)["healthy"] is True


# -- messages over a raw socket -------------------------------------------------------


async def test_chunked_message_is_delivered_and_answered_202(runtime: UPID, inbox: Inbox) -> None:
    status, headers, body = await request(runtime.port, message("inbox", "m", b"chunky"))
    assert (status, headers["content-length"], body) == (202, "0", b"")
    await inbox.wait_for(1)
    assert inbox.got == [("m", UPID.parse(SENDER), b"chunky")]


async def test_content_length_message_is_delivered(runtime: UPID, inbox: Inbox) -> None:
    assert (await request(runtime.port, message("inbox", "m", b"cl", chunked=False)))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got[0][2] == b"cl"


async def test_message_with_user_agent_only_is_delivered(runtime: UPID, inbox: Inbox) -> None:
    data = b"POST /inbox/m HTTP/1.1\r\nUser-Agent: libprocess/ua@127.0.0.1:9\r\n\r\n"
    assert (await request(runtime.port, data))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got == [("m", UPID("ua", "127.0.0.1", 9), b"")]


async def test_http_1_0_message_without_host_is_delivered(runtime: UPID, inbox: Inbox) -> None:
    data = message("inbox", "m", b"old", chunked=False, version="HTTP/1.0")
    assert b"Host" not in data
    assert (await request(runtime.port, data))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got[0][2] == b"old"


async def test_gzip_message_body_is_delivered_decompressed(runtime: UPID, inbox: Inbox) -> None:
    data = message(
        "inbox",
        "m",
        gzip.compress(b"zipped" * 100),
        chunked=False,
        extra="Content-Encoding: gzip\r\n",
    )
    assert (await request(runtime.port, data))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got[0][2] == b"zipped" * 100


async def test_query_string_is_ignored_for_messages(runtime: UPID, inbox: Inbox) -> None:
    assert (await request(runtime.port, message("inbox", "m?x=1", b"q")))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got[0][:1] == ("m",)


async def test_percent_encoded_receiver_id_and_raw_name(runtime: UPID) -> None:
    inbox = Inbox("in box")
    libproc.spawn(inbox)
    assert (await request(runtime.port, message("in%20box", "a/b", b"p")))[0] == 202
    await inbox.wait_for(1)
    assert inbox.got[0][:1] == ("a/b",)


async def test_message_without_handler_is_still_202(runtime: UPID, inbox: Inbox) -> None:
    before = metrics.counters.get("libproc/messages_unhandled", 0)
    assert (await request(runtime.port, message("inbox", "unknown-name", b"x")))[0] == 202
    await Clock.settle()
    assert metrics.counters.get("libproc/messages_unhandled", 0) == before + 1


async def test_message_to_unknown_id_is_404(runtime: UPID, inbox: Inbox) -> None:
    assert (await request(runtime.port, message("ghost", "m", b"x")))[0] == 404


async def test_message_to_a_terminating_process_is_404(runtime: UPID, inbox: Inbox) -> None:
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    libproc.dispatch(inbox.pid, hold)
    await Clock.settle(max_rounds=20)
    libproc.terminate(inbox.pid, inject=False)
    try:
        assert (await request(runtime.port, message("inbox", "m", b"x")))[0] == 404
    finally:
        gate.set()


async def test_path_not_starting_with_slash_is_400(runtime: UPID, inbox: Inbox) -> None:
    data = b"POST inbox/m HTTP/1.1\r\nLibprocess-From: " + SENDER.encode() + b"\r\n\r\n"
    assert (await request(runtime.port, data))[0] == 400


async def test_bad_sender_upid_is_500(runtime: UPID, inbox: Inbox) -> None:
    assert (await request(runtime.port, message("inbox", "m", b"x", sender="nonsense")))[0] == 500
    assert inbox.got == []


async def test_pipelined_messages_are_answered_in_request_order(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(
        message("inbox", "m", b"1")
        + message("ghost", "m", b"2")
        + message("inbox", "n", b"3", chunked=False)
        + message("inbox", "m", b"4", sender="bad")
    )
    statuses = [(await conn.response())[0] for _ in range(4)]
    await conn.close()
    assert statuses == [202, 404, 202, 500]
    await inbox.wait_for(2)
    assert [(n, b) for n, _, b in inbox.got] == [("m", b"1"), ("n", b"3")]


async def test_receiver_keeps_the_connection_open_between_messages(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(message("inbox", "m", b"first"))
    assert (await conn.response())[0] == 202
    await asyncio.sleep(0.05)
    conn.write(message("inbox", "m", b"second"))
    assert (await conn.response())[0] == 202
    await conn.close()
    await inbox.wait_for(2)


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("host", ["Host: 127.0.0.1:1\r\n", ""])
async def test_message_after_a_get_on_the_same_connection_is_delivered(
    runtime: UPID, inbox: Inbox, host: str, chunked: bool
) -> None:
    # After a GET the connection is served by aiohttp, whose own parser would refuse an
    # HTTP/1.1 request without Host: the framing rules must not change there.
    conn = await Conn.open(runtime.port)
    conn.write(
        b"GET /inbox/text HTTP/1.1\r\n\r\n"
        + message("inbox", "m", b"late", extra=host, chunked=chunked)
    )
    first, second = await conn.response(), await conn.response()
    await conn.close()
    assert (first[0], first[2]) == (200, b"plain text\n")
    assert second[0] == 202
    await inbox.wait_for(1)
    assert inbox.got == [("m", UPID.parse(SENDER), b"late")]


async def test_garbage_after_a_get_is_answered_up_to_the_garbage_then_closed(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00\x01 not http\r\n\r\n")
    first = await conn.response()
    assert (first[0], first[2]) == (200, b"plain text\n")
    assert await conn.closed_without_response()


async def test_gzip_message_after_a_get_on_the_same_connection_is_delivered(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(
        b"GET /inbox/text HTTP/1.1\r\nHost: x\r\n\r\n"
        + message(
            "inbox",
            "m",
            gzip.compress(b"zipped" * 10),
            chunked=False,
            extra="Host: x\r\nContent-Encoding: gzip\r\n",
        )
    )
    first, second = await conn.response(), await conn.response()
    await conn.close()
    assert (first[0], second[0]) == (200, 202)
    await inbox.wait_for(1)
    assert inbox.got[0][2] == b"zipped" * 10


async def test_messages_before_a_get_are_answered_before_it(runtime: UPID, inbox: Inbox) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(message("inbox", "m", b"1") + b"GET /inbox/json HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second = await conn.response(), await conn.response()
    await conn.close()
    assert (first[0], second[0], second[2]) == (202, 200, b'{"answer": 42}')


async def test_undecodable_protobuf_is_counted_in_metrics_and_process_keeps_serving(
    runtime: UPID,
) -> None:
    got: list[list[str]] = []

    class Master(ProtobufProcess):
        def initialize(self) -> None:
            self.install(
                pb.ReportProgressMessage,
                lambda s, tasks: got.append([t.name for t in tasks]),
                "tasks",
            )

    libproc.spawn(Master("master"))
    name = "cluster.ReportProgressMessage"
    before = json.loads((await get(runtime.port, "/metrics/snapshot"))[2]).get(
        "libproc/messages_undecodable", 0
    )
    assert (await request(runtime.port, message("master", name, b"\xff\xfe\xfd")))[0] == 202
    good = pb.ReportProgressMessage(
        tasks=[pb.Task(name="t", task_id=pb.TaskID(value="1"), progress=0.25)]
    ).SerializeToString()
    assert (await request(runtime.port, message("master", name, good)))[0] == 202
    await Clock.settle()
    snap = json.loads((await get(runtime.port, "/metrics/snapshot"))[2])
    assert snap["libproc/messages_undecodable"] == before + 1
    assert got == [["t"]]


# -- hostile or broken peers ----------------------------------------------------------


async def test_garbage_bytes_close_only_that_connection(runtime: UPID, inbox: Inbox) -> None:
    good = await Conn.open(runtime.port)
    good.write(message("inbox", "m", b"before"))
    assert (await good.response())[0] == 202
    bad = await Conn.open(runtime.port)
    bad.write(b"\x16\x03\x01\x00\xff garbage \x00\r\n\r\n")
    assert await bad.closed_without_response()
    good.write(message("inbox", "m", b"after"))
    assert (await good.response())[0] == 202
    await good.close()
    await inbox.wait_for(2)
    assert [b for _, _, b in inbox.got] == [b"before", b"after"]


async def test_garbage_after_a_good_message_answers_it_then_closes(
    runtime: UPID, inbox: Inbox
) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(message("inbox", "m", b"ok") + b"NOT HTTP AT ALL\r\n\r\n")
    assert (await conn.response())[0] == 202
    assert await conn.closed_without_response()
    await inbox.wait_for(1)


async def test_truncated_request_does_not_disturb_others(runtime: UPID, inbox: Inbox) -> None:
    for cut in (10, 60, len(message("inbox", "m", b"0123456789")) - 3):
        broken = await Conn.open(runtime.port)
        broken.write(message("inbox", "m", b"0123456789")[:cut])
        await asyncio.sleep(0.01)
        await broken.close()
    assert (await request(runtime.port, message("inbox", "m", b"fine")))[0] == 202
    assert (await get(runtime.port, "/inbox/text"))[0] == 200
    await inbox.wait_for(1)
    assert [b for _, _, b in inbox.got] == [b"fine"]


async def test_oversized_head_closes_the_connection(runtime: UPID, inbox: Inbox) -> None:
    conn = await Conn.open(runtime.port)
    conn.write(b"POST /inbox/m HTTP/1.1\r\nX-Big: " + b"a" * 70_000)
    assert await conn.closed_without_response()
    assert (await request(runtime.port, message("inbox", "m", b"x")))[0] == 202
