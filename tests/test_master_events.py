"""The master's event stream (master/events.py): pure parts, the hub under a paused Clock,
and the SSE writer over real sockets (a real aiohttp server, a real aiohttp client, a raw
socket that never reads)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from libproc import Clock
from master.events import (
    Backlog,
    EventHub,
    HubLimits,
    ProgressCoalescer,
    parse_event_id,
)
from waiting import until

# -- pure parts -------------------------------------------------------------------------------


def test_backlog_since_returns_events_after_a_seq_and_none_for_a_gap() -> None:
    log = Backlog(3)
    for i in range(5):
        log.append({"n": i})
    assert [e.seq for e in log.since(2) or []] == [3, 4, 5]
    assert [e.seq for e in log.since(4) or []] == [5]
    assert log.since(5) == []
    assert log.since(1) is None  # 2 was evicted: the reader missed it
    assert log.since(6) is None  # from the future (forged, or another boot)
    assert len(log) == 3 and log.first_seq == 3


def test_empty_backlog_accepts_the_current_position() -> None:
    log = Backlog(3)
    assert log.since(0) == []
    assert log.since(1) is None


def test_parse_event_id_accepts_only_this_boots_ids() -> None:
    assert parse_event_id("ab12-7", "ab12") == 7
    assert parse_event_id(" ab12-7 ", "ab12") == 7
    assert parse_event_id("cd34-7", "ab12") is None
    assert parse_event_id("ab12-", "ab12") is None
    assert parse_event_id("ab12--1", "ab12") is None
    assert parse_event_id("ab12-" + "9" * 40, "ab12") is None
    assert parse_event_id("garbage", "ab12") is None


def test_coalescer_lets_one_value_per_key_per_interval_and_keeps_the_latest() -> None:
    c = ProgressCoalescer[str, float](1.0)
    assert c.offer("a", 0.1, now=100.0)
    assert not c.offer("a", 0.2, now=100.2)
    assert not c.offer("a", 0.3, now=100.5)
    assert c.offer("b", 0.5, now=100.5)  # another key is not held back
    assert c.next_due() == pytest.approx(101.0)
    assert c.due(100.9) == []
    assert c.due(101.0) == [("a", 0.3)]
    assert c.next_due() is None
    assert not c.offer("a", 0.4, now=101.5)  # its window restarted when it went out
    assert c.offer("a", 0.6, now=102.0)  # a value at the window's end goes out at once
    assert c.due(103.0) == []  # ... and the held 0.4 went with it


def test_coalescer_forget_drops_a_held_value() -> None:
    c = ProgressCoalescer[str, float](1.0)
    c.offer("a", 0.1, now=0.0)
    c.offer("a", 0.2, now=0.1)
    c.forget("a")
    assert c.due(5.0) == [] and len(c) == 0


def test_coalescer_memory_stays_bounded_by_recent_keys() -> None:
    c = ProgressCoalescer[int, float](1.0)
    for i in range(10_000):
        c.offer(i, 0.5, now=float(i))  # each key once, one a second: none restricts later
    assert len(c._last) < 200


def test_limits_refuse_a_buffer_larger_than_the_backlog() -> None:
    with pytest.raises(ValueError, match="subscriber_buffer"):
        HubLimits(backlog=10, subscriber_buffer=11)


# -- the hub, no sockets ----------------------------------------------------------------------


@pytest.fixture
def paused() -> Any:
    Clock.reset()
    Clock.pause()
    yield
    Clock.reset()


def _payloads(hub: EventHub) -> list[dict[str, Any]]:
    return [e.payload for e in hub.backlog.since(0) or []]


async def test_progress_is_coalesced_to_one_entry_per_task_per_second(paused: None) -> None:
    hub = EventHub()
    hub.publish_progress("1", 0.1)
    hub.publish_progress("2", 0.5)
    await asyncio.sleep(0)
    hub.publish_progress("1", 0.2)
    hub.publish_progress("1", 0.3)
    await asyncio.sleep(0)
    first = _payloads(hub)
    assert len(first) == 1  # both immediate values in one event
    assert [(t["id"], t["progress"]) for t in first[0]["tasks"]] == [("1", 0.1), ("2", 0.5)]
    Clock.advance(0.5)
    await asyncio.sleep(0)
    assert len(_payloads(hub)) == 1
    Clock.advance(0.5)
    await asyncio.sleep(0)
    events = _payloads(hub)
    assert len(events) == 2 and events[1]["type"] == "progress"
    assert [(t["id"], t["progress"]) for t in events[1]["tasks"]] == [("1", 0.3)]


async def test_a_state_change_supersedes_held_progress(paused: None) -> None:
    hub = EventHub()
    hub.publish_progress("1", 0.1)
    await asyncio.sleep(0)
    hub.publish_progress("1", 0.9)  # held
    hub.publish_task({"id": "1", "state": "FINISHED", "progress": 1.0})
    Clock.advance(5)
    await asyncio.sleep(0)
    kinds = [p["type"] for p in _payloads(hub)]
    assert kinds == ["progress", "task"]


async def test_events_carry_consecutive_ids_and_the_clock_time(paused: None) -> None:
    hub = EventHub(boot="b00t")
    hub.publish_slave({"id": "s1", "state": "active"})
    hub.publish_task({"id": "7", "state": "RUNNING"})
    events = hub.backlog.since(0) or []
    assert [e.seq for e in events] == [1, 2]
    assert events[0].payload["time"] == Clock.now()
    frame = events[1].frame(hub.boot).decode()
    assert frame.startswith("id: b00t-2\ndata: {")
    assert json.loads(frame.split("data: ", 1)[1]) == events[1].payload


def test_an_event_that_cannot_be_encoded_becomes_a_reset() -> None:
    hub = EventHub(boot="b")
    hub.backlog.append({"type": "task", "task": {"progress": float("nan")}})
    frame = (hub.backlog.since(0) or [])[0].frame("b").decode()
    assert json.loads(frame.split("data: ", 1)[1])["type"] == "reset"


# -- over real sockets ------------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[EventHub, str]]:
    """A real aiohttp server on 127.0.0.1 (a free port) serving one hub at /master/events."""
    Clock.reset()
    hub = EventHub(HubLimits(backlog=64, subscriber_buffer=16, max_subscribers=3), boot="t1")
    app = web.Application()
    app.router.add_route("*", "/master/events", hub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield hub, f"http://127.0.0.1:{port}/master/events"
    finally:
        hub.close()
        await runner.cleanup()
        Clock.reset()


class SSEReader:
    """Reads an SSE stream into (id, data-dict) events and comment lines."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> tuple[str | None, dict[str, Any]]:
        event_id, data = None, []
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not raw:
                raise EOFError("stream closed")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return event_id, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])


async def _open(session: aiohttp.ClientSession, url: str,
                last: str | None = None) -> tuple[aiohttp.ClientResponse, SSEReader]:
    headers = {"Last-Event-ID": last} if last else {}
    resp = await session.get(url, headers=headers)
    return resp, SSEReader(resp)


async def test_stream_delivers_events_and_resumes_from_last_event_id(
        served: tuple[EventHub, str]) -> None:
    hub, url = served
    async with aiohttp.ClientSession() as session:
        resp, reader = await _open(session, url)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"].startswith("no-cache")
        await until(lambda: hub.subscribers == 1)
        hub.publish_task({"id": "1", "state": "RUNNING"})
        hub.publish_slave({"id": "s1", "state": "lost"})
        first_id, first = await reader.next()
        second_id, second = await reader.next()
        assert first["type"] == "task" and first["task"]["id"] == "1"
        assert second["type"] == "slave" and second["slave"]["state"] == "lost"
        assert (first_id, second_id) == ("t1-1", "t1-2")
        resp.close()
        await until(lambda: hub.subscribers == 0)
        hub.publish_task({"id": "2", "state": "PENDING"})  # missed while away
        hub.publish_task({"id": "3", "state": "PENDING"})
        resp, reader = await _open(session, url, last=first_id)
        got = [await reader.next() for _ in range(3)]
        assert [i for i, _ in got] == ["t1-2", "t1-3", "t1-4"]
        assert [p.get("task", p.get("slave"))["id"] for _, p in got] == ["s1", "2", "3"]
        resp.close()


@pytest.mark.parametrize("last", ["other-3", "t1-999", "nonsense", "t1-0"])
async def test_unusable_last_event_id_gets_a_reset_event(
        served: tuple[EventHub, str], last: str) -> None:
    hub, url = served
    for i in range(70):  # more than the backlog holds: t1-0 is then too old
        hub.publish_task({"id": str(i), "state": "PENDING"})
    async with aiohttp.ClientSession() as session:
        resp, reader = await _open(session, url, last=last)
        event_id, payload = await reader.next()
        assert payload["type"] == "reset" and "fetch the state again" in payload["reason"]
        assert event_id == "t1-70"  # a reconnect after it resumes from here
        hub.publish_task({"id": "new", "state": "PENDING"})
        _, payload = await reader.next()
        assert payload["task"]["id"] == "new"
        resp.close()


async def test_subscribers_past_the_cap_get_503_with_a_json_error(
        served: tuple[EventHub, str]) -> None:
    hub, url = served
    async with aiohttp.ClientSession() as session:
        opened = [await session.get(url) for _ in range(3)]
        assert all(r.status == 200 for r in opened)
        await until(lambda: hub.subscribers == 3)
        refused = await session.get(url)
        assert refused.status == 503
        assert "too many event stream subscribers" in (await refused.json())["error"]
        assert refused.headers["Retry-After"] == "5"
        assert hub.stats()["event_subscribers_refused"] == 1
        opened[0].close()
        await until(lambda: hub.subscribers == 2)
        again = await session.get(url)
        assert again.status == 200
        for r in opened[1:] + [again]:
            r.close()


async def test_post_is_refused_with_405(served: tuple[EventHub, str]) -> None:
    _, url = served
    async with aiohttp.ClientSession() as session, session.post(url) as resp:
        assert resp.status == 405
        assert "use GET" in (await resp.json())["error"]


async def test_keepalive_comment_after_15_clock_seconds_of_silence(
        served: tuple[EventHub, str]) -> None:
    hub, url = served
    Clock.pause()
    async with aiohttp.ClientSession() as session:
        resp, reader = await _open(session, url)
        await until(lambda: hub.subscribers == 1)
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line.startswith(b"retry: ")
        assert await asyncio.wait_for(resp.content.readline(), 10) == b": connected\n"
        await asyncio.wait_for(resp.content.readline(), 10)  # the blank line
        Clock.advance(14.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readline(), 0.3)
        got = b""
        for _ in range(50):  # the writer arms its timer once it is idle: advance until then
            Clock.advance(15.0)
            try:
                got = await asyncio.wait_for(resp.content.readline(), 0.2)
                break
            except TimeoutError:
                continue
        assert got == b": keep-alive\n"
        resp.close()


async def test_a_subscriber_that_stops_reading_is_dropped_and_others_get_everything(
        served: tuple[EventHub, str]) -> None:
    hub, url = served
    port = int(url.split(":")[2].split("/")[0])
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, ("127.0.0.1", port))
    await loop.sock_sendall(slow, b"GET /master/events HTTP/1.1\r\nHost: x\r\n\r\n")
    async with aiohttp.ClientSession() as session:
        resp, reader = await _open(session, url)
        await until(lambda: hub.subscribers == 2)
        blob = "x" * 200_000
        received = 0
        for i in range(60):  # 12 MB: far more than the sockets' buffers; the slow one lags
            hub.publish_task({"id": str(i), "state": "RUNNING", "blob": blob})
            while received <= i:  # the healthy subscriber keeps up
                _, payload = await reader.next()
                assert payload["task"]["id"] == str(received)
                received += 1
        await until(lambda: hub.stats()["event_subscribers_dropped"] == 1)
        assert hub.subscribers == 1
        resp.close()
    slow.close()


async def test_the_stream_works_behind_a_libproc_route(runtime: Any) -> None:
    """As the master can mount it before its router moves to aiohttp: a route of a libproc
    process whose handler returns the stream as a future (so the mailbox does not wait)."""
    import libproc
    from libproc.future import as_future

    hub = EventHub(HubLimits(backlog=64, subscriber_buffer=16, max_subscribers=2), boot="lp")

    class Events(libproc.Process):
        def initialize(self) -> None:
            self.route("/events", lambda request: as_future(hub.handle(request)))
            self.route("/ping", lambda request: "pong")

    proc = Events("eventsproc")
    libproc.spawn(proc)
    base = f"http://127.0.0.1:{runtime.port}/eventsproc"
    try:
        async with aiohttp.ClientSession() as session:
            resp, reader = await _open(session, base + "/events")
            assert resp.status == 200
            await until(lambda: hub.subscribers == 1)
            async with session.get(base + "/ping") as ping:  # the process is not blocked
                assert await ping.text() == "pong"
            hub.publish_task({"id": "1", "state": "RUNNING"})
            event_id, payload = await reader.next()
            assert event_id == "lp-1" and payload["task"]["id"] == "1"
            resp.close()
            await until(lambda: hub.subscribers == 0, timeout=15)  # the client left: noticed
    finally:
        hub.close()
        libproc.terminate(proc.pid)
        await libproc.wait(proc.pid)


@pytest.mark.timeout(120)
def test_the_event_benchmark_stays_runnable() -> None:
    """A tiny run of benchmarks/bench_events prints each figure beside its baseline."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_events", "--events", "300",
                          "--subscribers", "2", "--runs", "1"], capture_output=True, text=True,
                         timeout=110, check=False)
    assert out.returncode == 0, out.stderr
    assert "1.00x" in out.stdout and "no subscriber" in out.stdout
    assert "served to 2 SSE subscribers" in out.stdout
