"""libprocess's process_tests.cpp, the cases over real sockets on 127.0.0.1: messages from a
raw socket and from HTTP clients, percent-encoded ids, the firewall, `/__processes__`.

Every case here has a meaning in Python and is ported. The request bytes of ProcessTest.Remote
are written out by hand in libprocess's format (DESIGN.md §2.1), not with libproc's encoder.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from libproc import UPID, Process, Promise, dispatch, firewall, post, spawn, terminate, wait
from libproc.firewall import DisabledEndpointsFirewallRule
from libprocess.support import await_ready

pytestmark = pytest.mark.timeout(60)


class RemoteProcess(Process):
    """Records the sender and body of each "handler" message."""

    def __init__(self, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id, prefix="remote")
        self.got: Promise[tuple[UPID, bytes]] = Promise()
        self.install("handler", self.handler)

    def handler(self, sender: UPID, body: bytes) -> None:
        self.got.set((sender, body))


def _url(pid: UPID, path: str) -> str:
    return f"http://{pid.host}:{pid.port}/{path}"


# ProcessTest.Remote
async def test_a_message_written_on_a_raw_socket_is_delivered(runtime: UPID) -> None:
    process = RemoteProcess()
    spawn(process)
    reader, writer = await asyncio.open_connection(process.pid.host, process.pid.port)
    host, port = writer.get_extra_info("sockname")[:2]
    sender = UPID("sender", host, port)
    body = b"hello world"
    writer.write(
        f"POST /{process.id}/handler HTTP/1.1\r\n"
        f"User-Agent: libprocess/{sender}\r\n"
        f"Libprocess-From: {sender}\r\n"
        "Connection: Keep-Alive\r\n"
        f"Host: {process.pid.host}:{process.pid.port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    await writer.drain()
    assert await await_ready(process.got.future) == (sender, body)
    writer.close()
    terminate(process)
    await await_ready(wait(process))


# ProcessTest.Http1
async def test_a_post_with_a_libprocess_user_agent_is_a_message(runtime: UPID) -> None:
    process = RemoteProcess()
    spawn(process)
    async with aiohttp.ClientSession() as http:
        sender = UPID("sender", "127.0.0.1", 99)
        async with http.post(_url(process.pid, f"{process.id}/handler"),
                             headers={"User-Agent": f"libprocess/{sender}"},
                             data=b"hello world") as response:
            assert response.status == 202
        assert await await_ready(process.got.future) == (sender, b"hello world")
    terminate(process)
    await await_ready(wait(process))


# ProcessTest.Http2
async def test_a_post_with_libprocess_from_is_a_message_and_post_replies(
    runtime: UPID,
) -> None:
    process = RemoteProcess()
    spawn(process)
    # A receiving socket, so that a message can come back.
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await lines.put(await reader.readline())
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = UPID("", process.pid.host, port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(_url(process.pid, f"{process.id}/handler"),
                                 headers={"Libprocess-From": str(sender)},
                                 data=b"hello world") as response:
                assert response.status == 202
                assert response.reason == "Accepted"
        assert await await_ready(process.got.future) == (sender, b"hello world")

        # Now post a message as though it came from the process.
        post(sender, "reply", sender=process.pid)
        line = await asyncio.wait_for(lines.get(), 15)
        assert line.startswith(b"POST /reply HTTP/1.1")
    finally:
        server.close()
        await server.wait_closed()
    terminate(process)
    await await_ready(wait(process))


class PercentEncodedIDProcess(Process):
    def __init__(self) -> None:
        super().__init__("id(42)")
        self.handled: Promise[UPID] = Promise()

    def initialize(self) -> None:
        self.install("handler1", lambda sender, body: self.handled.set(sender))
        self.route("/handler2", lambda request: "OK")


# ProcessTest.PercentEncodedURLs
async def test_a_percent_encoded_id_reaches_its_process(runtime: UPID) -> None:
    process = PercentEncodedIDProcess()
    spawn(process)
    encoded = "id%2842%29"
    sender = UPID("sender", process.pid.host, 99)
    async with aiohttp.ClientSession() as http:
        async with http.post(_url(process.pid, f"{encoded}/handler1"),
                             headers={"User-Agent": f"libprocess/{sender}"}) as response:
            assert response.status == 202
        assert await await_ready(process.handled.future) == sender
        async with http.get(_url(process.pid, f"{encoded}/handler2")) as response:
            assert response.status == 200
            assert await response.text() == "OK"
    terminate(process)
    await await_ready(wait(process))


class HTTPEndpointProcess(Process):
    def __init__(self, id: str) -> None:  # noqa: A002
        super().__init__(id)
        self.served: list[str] = []

    def initialize(self) -> None:
        for name in ("handler1", "handler2", "handler3"):
            self.route(f"/{name}", lambda request, n=name: self._serve(n, request))

    def _serve(self, name: str, request: Any) -> str:
        self.served.append(f"{name} {request.path}")
        return "OK"


async def _status(http: aiohttp.ClientSession, pid: UPID, path: str) -> int:
    async with http.get(_url(pid, f"{pid.id}/{path}")) as response:
        return response.status


# ProcessTest.FirewallDisablePaths
async def test_firewall_rule_disables_exact_paths_only(runtime: UPID) -> None:
    process_id = "testprocess"
    firewall.install([DisabledEndpointsFirewallRule([
        f"/{process_id}/handler1",
        f"/{process_id}/handler2/nested",
        f"/{process_id}/handler3/*",  # patterns are not supported: this does nothing
    ])])
    process = HTTPEndpointProcess(process_id)
    pid = spawn(process)
    async with aiohttp.ClientSession() as http:
        async with http.get(_url(pid, f"{process_id}/handler1")) as response:
            assert response.status == 403
            assert response.reason == "Forbidden"
        assert await _status(http, pid, "handler2") == 200  # substrings do not match
        assert await _status(http, pid, "handler2/nested") == 403  # full paths match
        assert await _status(http, pid, "handler2/nested/path") == 200
        assert await _status(http, pid, "handler3") == 200  # no wildcards
        assert await _status(http, pid, "handler3/nested") == 200
    assert process.served == [
        "handler2 /testprocess/handler2",
        "handler2 /testprocess/handler2/nested/path",
        "handler3 /testprocess/handler3",
        "handler3 /testprocess/handler3/nested",
    ]
    terminate(process)
    await await_ready(wait(process))


# ProcessTest.FirewallUninstall
async def test_installing_no_rules_removes_the_firewall(runtime: UPID) -> None:
    process_id = "testprocess"
    firewall.install([DisabledEndpointsFirewallRule(
        [f"/{process_id}/handler1", f"/{process_id}/handler2"])])
    process = HTTPEndpointProcess(process_id)
    pid = spawn(process)
    async with aiohttp.ClientSession() as http:
        assert await _status(http, pid, "handler1") == 403
        assert await _status(http, pid, "handler2") == 403
        firewall.install([])
        assert await _status(http, pid, "handler1") == 200
        assert await _status(http, pid, "handler2") == 200
    assert process.served == ["handler1 /testprocess/handler1", "handler2 /testprocess/handler2"]
    terminate(process)
    await await_ready(wait(process))


class BlockedProcess(Process):
    """Holds itself in a dispatch until released."""

    def __init__(self) -> None:
        super().__init__(prefix="blocked")
        self.inside: Promise[None] = Promise()
        self.release = asyncio.Event()

    async def wait_for_terminate(self) -> str:
        self.inside.set(None)
        await self.release.wait()
        return "released"


# ProcessTest.ProcessesEndpointNoHang
async def test_processes_endpoint_answers_while_a_process_is_held_and_terminated(
    runtime: UPID,
) -> None:
    process = BlockedProcess()
    spawn(process)
    waited = dispatch(process, BlockedProcess.wait_for_terminate)
    await await_ready(process.inside.future)
    queued = dispatch(process, BlockedProcess.wait_for_terminate)  # stays queued
    async with aiohttp.ClientSession() as http:
        get = asyncio.ensure_future(http.get(_url(runtime, "__processes__")))
        terminate(process, inject=True)
        response = await asyncio.wait_for(get, 15)
        assert response.status == 200
        listed = {p["id"]: p for p in await response.json()}
        response.release()
    assert process.id in listed
    process.release.set()
    assert await await_ready(waited) == "released"
    assert await await_ready(wait(process)) is True
    assert queued.is_discarded()  # dropped by the injected termination
