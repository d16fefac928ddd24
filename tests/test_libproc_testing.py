"""libproc.testing's event filters, `post` and per-message `delegate`, beyond the ported
suite: matching rules, newest-wins, repeated drops, protobufs, messages from another OS
process over a real socket, and no filter left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock, FutureAbandonedError, Process, ProtobufProcess, testing
from libproc import process as process_module
from libproc.testing import ANY
from protos import cluster_pb2 as pb
from waiting import within

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_expectations() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


class Inbox(ProtobufProcess):
    def __init__(self, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id, prefix="inbox")
        self.got: list[Any] = []

    def initialize(self) -> None:
        self.install("note", lambda sender, body: self.got.append(("note", sender, body)))
        self.install(pb.TaskID, lambda sender, msg: self.got.append(("task", msg.value)))

    def poke(self, value: int) -> int:
        self.got.append(("poke", value))
        return value


async def test_the_newest_matching_expectation_wins_and_one_shot_ones_retire(
    runtime: UPID,
) -> None:
    inbox = Inbox()
    libproc.spawn(inbox)
    older = testing.future_message("note", ANY, inbox.pid)
    newer = testing.drop_message("note", ANY, inbox.id)  # a bare id matches too
    libproc.post(inbox.pid, "note", b"1")
    assert (await within(newer)).body == b"1"
    assert older.is_pending()
    libproc.post(inbox.pid, "note", b"2")
    assert (await within(older)).body == b"2"
    await Clock.settle()
    assert inbox.got == [("note", libproc.NO_SENDER, b"2")]
    assert process_module._filter is None  # no expectation left: no filter on the hot path


async def test_drop_messages_drops_every_match_until_reset(runtime: UPID) -> None:
    inbox = Inbox()
    libproc.spawn(inbox)
    sender = runtime.with_id("someone")
    testing.drop_messages("note", sender, ANY)
    for i in range(3):
        libproc.post(inbox.pid, "note", str(i).encode(), sender=sender)
    libproc.post(inbox.pid, "note", b"other sender")
    await Clock.settle()
    assert inbox.got == [("note", libproc.NO_SENDER, b"other sender")]
    testing.reset()
    libproc.post(inbox.pid, "note", b"after reset", sender=sender)
    await Clock.settle()
    assert inbox.got[-1] == ("note", sender, b"after reset")


async def test_future_protobuf_parses_the_message_and_fails_on_bad_bytes(
    runtime: UPID,
) -> None:
    inbox = Inbox()
    libproc.spawn(inbox)
    good = testing.future_protobuf(pb.TaskID, ANY, inbox)
    libproc.post(inbox.pid, pb.TaskID.DESCRIPTOR.full_name,
                 pb.TaskID(value="t-1").SerializeToString())
    assert (await within(good)).value == "t-1"
    bad = testing.drop_protobuf(pb.TaskID, ANY, inbox)
    libproc.post(inbox.pid, pb.TaskID.DESCRIPTOR.full_name, b"\xff\xff\xff")
    await Clock.settle()
    assert bad.is_failed()
    assert inbox.got == [("task", "t-1")]


async def test_a_message_from_another_os_process_is_seen_at_delivery(runtime: UPID) -> None:
    inbox = Inbox("inbox")
    libproc.spawn(inbox)
    arrived = testing.future_message("note", "peer@127.0.0.1:9", inbox.pid)
    _, writer = await asyncio.open_connection(runtime.host, runtime.port)
    writer.write(b"POST /inbox/note HTTP/1.1\r\nLibprocess-From: peer@127.0.0.1:9\r\n"
                 b"Content-Length: 2\r\n\r\nhi")
    await writer.drain()
    message = await within(arrived)
    assert (message.name, message.sender, message.to, message.body) == (
        "note", UPID("peer", "127.0.0.1", 9), inbox.pid, b"hi")
    writer.close()


async def test_dispatch_expectations_match_by_function_name_or_any(runtime: UPID) -> None:
    inbox = Inbox()
    libproc.spawn(inbox)
    by_name = testing.future_dispatch(inbox.pid, "poke")
    assert await within(libproc.dispatch(inbox.pid, Inbox.poke, 1)) == 1
    await within(by_name)
    dropped = testing.drop_dispatch(ANY, ANY)
    call = libproc.dispatch(inbox.pid, inbox.poke, 2)
    await within(dropped)
    with pytest.raises(FutureAbandonedError):
        await within(call)
    other = testing.future_dispatch(inbox.pid, Inbox.initialize)
    libproc.dispatch(inbox.pid, Inbox.poke, 3)
    await Clock.settle()
    assert other.is_pending()  # a different method does not match
    assert inbox.got == [("poke", 1), ("poke", 3)]


async def test_bad_matchers_are_refused_with_a_clear_error(runtime: UPID) -> None:
    with pytest.raises(TypeError, match="a UPID, a Process"):
        testing.future_message("note", 42, ANY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a message name"):
        testing.future_message(3.5, ANY, ANY)  # type: ignore[arg-type]
    assert testing.inject_exited(runtime.with_id("a"), runtime.with_id("nobody")) is False


async def test_post_reaches_a_remote_peer_with_the_empty_sender(runtime: UPID) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await got.put(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        libproc.post(UPID("peer", "127.0.0.1", port), "hello")
        head = await asyncio.wait_for(got.get(), 10)
        assert head.startswith(b"POST /peer/hello HTTP/1.1\r\n")
        assert b"Libprocess-From: @0.0.0.0:0\r\n" in head
        libproc.post(UPID("", "", 0), "nowhere")  # an empty UPID is ignored
    finally:
        server.close()
        await server.wait_closed()


def test_post_needs_the_runtime() -> None:
    with pytest.raises(libproc.NotRunningError, match="post 'x'"):
        libproc.post(UPID("a", "127.0.0.1", 1), "x")


async def test_a_delegation_forwards_with_the_sender_until_a_handler_replaces_it(
    runtime: UPID,
) -> None:
    target = Inbox()
    libproc.spawn(target)
    front = Process(prefix="front")
    front.delegate("note", target.pid)
    libproc.spawn(front)
    sender = runtime.with_id("caller")
    libproc.post(front.pid, "note", b"forwarded", sender=sender)
    await Clock.settle()
    assert target.got == [("note", sender, b"forwarded")]
    kept: list[bytes] = []
    front.install("note", lambda s, body: kept.append(body))
    libproc.post(front.pid, "note", b"kept")
    await Clock.settle()
    assert kept == [b"kept"] and len(target.got) == 1


async def test_pid_before_spawn_and_spawning_twice(runtime: UPID) -> None:
    process = Inbox()
    assert process.pid == runtime.with_id(process.id)
    libproc.spawn(process)
    with pytest.raises(ValueError, match="already spawned"):
        libproc.spawn(process)
    assert libproc.wait(UPID("x", "127.0.0.2", 1)).get() is False  # not a local process


async def test_post_in_libprocess_argument_order_and_bad_calls(runtime: UPID) -> None:
    inbox = Inbox()
    libproc.spawn(inbox)
    sender = runtime.with_id("from")
    libproc.post(sender, inbox.pid, "note", b"four")
    libproc.post(sender, inbox.pid, "note")
    await Clock.settle()
    assert inbox.got == [("note", sender, b"four"), ("note", sender, b"")]
    with pytest.raises(TypeError, match="bytes"):
        libproc.post(inbox.pid, "note", "text")
    with pytest.raises(TypeError, match="at most three"):
        libproc.post(inbox.pid, "note", b"", b"extra")
