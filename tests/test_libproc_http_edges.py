"""Odd but legal (or plainly bad) HTTP on libproc's port, over raw sockets.

A client that half-closes after its requests (`nc -N`, HTTP/1.0 tools) gets every answer,
then the connection closes; a request head over the cap is a JSON 431 (not a reset) when it
is plainly HTTP; control or non-ASCII bytes in a target or a header value are a JSON 400
from us, never aiohttp's text/plain answer with an ERROR and a traceback in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

import libproc
from libproc import UPID, Process


class Hello(Process):
    def initialize(self) -> None:
        self.route("/hello", lambda request: {"hello": request.query.get("who", "you")})


async def _exchange(port: int, data: bytes, *, half_close: bool = False,
                    timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if half_close:
        writer.write_eof()
    try:
        out = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return out


def _statuses(out: bytes) -> list[int]:
    return [int(part.split(b" ", 2)[1]) for part in out.split(b"HTTP/1.")[1:]]


def _json_body(out: bytes) -> Any:
    return json.loads(out.rsplit(b"\r\n\r\n", 1)[1])


@pytest.fixture
async def port(runtime: UPID) -> int:
    libproc.spawn(Hello("hello"))
    return runtime.port


GET = b"GET /hello/hello HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_half_closed_request_is_answered_then_closed(port: int) -> None:
    out = await _exchange(port, GET, half_close=True)
    assert _statuses(out) == [200] and _json_body(out) == {"hello": "you"}


async def test_every_pipelined_request_before_a_half_close_is_answered(port: int) -> None:
    out = await _exchange(port, GET * 3 + b"GET /hello/hello?who=me HTTP/1.0\r\n\r\n",
                          half_close=True)
    assert _statuses(out) == [200, 200, 200, 200]
    assert out.endswith(b'{"hello": "me"}')


async def test_a_half_close_mid_request_closes_without_an_answer(port: int) -> None:
    assert await _exchange(port, b"GET /hel", half_close=True) == b""


@pytest.mark.parametrize("head", [
    b"GET /hello/hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /hello/hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000,  # never ends
])
async def test_a_head_over_the_cap_is_a_431_json_answer(port: int, head: bytes) -> None:
    out = await _exchange(port, head)
    assert _statuses(out) == [431]
    assert "too large" in _json_body(out)["error"]


async def test_a_post_head_over_the_cap_may_be_a_message_so_it_is_closed(port: int) -> None:
    head = b"POST /hello/x HTTP/1.1\r\nLibprocess-From: a@1.2.3.4:5\r\nX-Big: " + b"a" * 70_000
    try:
        out = await _exchange(port, head + b"\r\n\r\n")
    except ConnectionResetError:
        out = b""
    assert b"HTTP/1.1" not in out


@pytest.mark.parametrize("request_bytes", [
    b"GET /hel\x00lo/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hel\xff\xfelo/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hello/hello?who=\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hello/hello HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /hello/hello HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
])
@pytest.mark.parametrize("before", [b"", GET])
async def test_control_and_raw_bytes_are_a_json_400_and_nothing_is_logged(
        port: int, request_bytes: bytes, before: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    out = await _exchange(port, before + request_bytes)
    # The good request (if any) first, then the refusal.
    assert _statuses(out) == [200, 400] if before else [400]
    assert "invalid" in _json_body(out)["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_obs_text_in_a_header_value_is_taken(port: int) -> None:
    out = await _exchange(port, b"GET /hello/hello HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n"
                          b"Connection: close\r\n\r\n")
    assert _statuses(out) == [200]
