"""The wire codec: byte-exact encoding (DESIGN.md §2.1), parsing, classification, fuzzing."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libproc import UPID
from libproc.errors import WireError
from libproc.wire import (
    RESPONSES,
    Limits,
    Message,
    MessageTarget,
    Request,
    RequestParser,
    classify,
    decode_body,
    encode_message,
    is_message,
)

SENDER = "ping@127.0.0.1:4000"


def parse_all(data: bytes, parser: RequestParser | None = None) -> list[Request]:
    return (parser or RequestParser()).feed(data)


def one(data: bytes) -> Request:
    reqs = parse_all(data)
    assert len(reqs) == 1
    return reqs[0]


# -- encoding: byte-exact -------------------------------------------------------------


def test_encode_message_with_body_is_byte_exact() -> None:
    data = encode_message(SENDER, "pong", "cluster.Ping", "127.0.0.1:5050", b"0123456789abcdefX")
    assert data == (
        b"POST /pong/cluster.Ping HTTP/1.1\r\n"
        b"User-Agent: libprocess/ping@127.0.0.1:4000\r\n"
        b"Libprocess-From: ping@127.0.0.1:4000\r\n"
        b"Connection: Keep-Alive\r\n"
        b"Host: 127.0.0.1:5050\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"11\r\n0123456789abcdefX\r\n0\r\n\r\n"
    )


def test_encode_message_with_empty_body_has_no_transfer_encoding_and_no_chunk() -> None:
    data = encode_message(SENDER, "pong", "stop", "10.0.0.1:5051", b"")
    assert data == (
        b"POST /pong/stop HTTP/1.1\r\n"
        b"User-Agent: libprocess/ping@127.0.0.1:4000\r\n"
        b"Libprocess-From: ping@127.0.0.1:4000\r\n"
        b"Connection: Keep-Alive\r\n"
        b"Host: 10.0.0.1:5051\r\n"
        b"\r\n"
    )


def test_encode_message_with_empty_receiver_id_posts_to_the_name() -> None:
    data = encode_message(SENDER, "", "hello", "127.0.0.1:1", b"")
    assert data.startswith(b"POST /hello HTTP/1.1\r\n")


def test_encode_chunk_size_is_lowercase_hex() -> None:
    body = bytes(range(256)) * 10 + b"x" * 171  # 2731 bytes = 0xaab
    data = encode_message(SENDER, "p", "n", "127.0.0.1:1", body)
    assert b"\r\n\r\naab\r\n" + body + b"\r\n0\r\n\r\n" in data


def test_responses_have_status_and_zero_content_length() -> None:
    assert RESPONSES[202] == b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
    assert RESPONSES[404].startswith(b"HTTP/1.1 404 ")
    for raw in RESPONSES.values():
        assert raw.endswith(b"Content-Length: 0\r\n\r\n")


# -- decoding -------------------------------------------------------------------------


def test_encoded_message_parses_back_to_the_same_message() -> None:
    body = b"\x00\x01binary\r\n0\r\n\r\n"  # a body that looks like the chunk trailer
    req = one(encode_message(SENDER, "slave(1)", "cluster.Launch", "127.0.0.1:1", body))
    assert req.method == "POST"
    assert req.target == "/slave(1)/cluster.Launch"
    assert req.headers["host"] == "127.0.0.1:1"
    assert req.body == body
    assert is_message(req)
    assert classify(req) == Message("slave(1)", "cluster.Launch", UPID.parse(SENDER), body)


def test_empty_body_message_parses_with_empty_body() -> None:
    req = one(encode_message(SENDER, "pong", "stop", "127.0.0.1:1", b""))
    msg = classify(req)
    assert isinstance(msg, Message)
    assert (msg.to_id, msg.name, msg.body) == ("pong", "stop", b"")


def test_content_length_body_is_read() -> None:
    req = one(
        b"POST /a/b HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert req.body == b"hello"


def test_zero_content_length_request_completes_without_body() -> None:
    req = one(b"POST /a/b HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\nContent-Length: 0\r\n\r\n")
    assert req.body == b""


def test_multi_chunk_body_with_extensions_and_trailers() -> None:
    data = (
        b"POST /a/b HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    assert one(data).body == b"abc0123456789"


def test_lf_only_line_ends_are_accepted() -> None:
    data = (
        b"POST /a/b HTTP/1.1\nLibprocess-From: x@1.2.3.4:5\n"
        b"Transfer-Encoding: chunked\n\n3\nabc\n0\n\n"
    )
    req = one(data)
    assert req.body == b"abc"
    assert req.headers["libprocess-from"] == "x@1.2.3.4:5"


def test_http_1_0_without_host_is_a_message() -> None:
    req = one(
        b"POST /p/n HTTP/1.0\r\nUser-Agent: libprocess/x@1.2.3.4:5\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert req.version == "HTTP/1.0"
    assert "host" not in req.headers
    assert classify(req) == Message("p", "n", UPID("x", "1.2.3.4", 5), b"hi")


def test_empty_lines_before_a_request_are_skipped() -> None:
    assert one(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n").target == "/"


def test_pipelined_requests_come_out_in_order() -> None:
    data = b"".join(encode_message(SENDER, "p", f"m{i}", "h:1", b"x" * i) for i in range(20))
    reqs = parse_all(data)
    assert [r.target for r in reqs] == [f"/p/m{i}" for i in range(20)]
    assert [len(r.body) for r in reqs] == list(range(20))


def test_header_names_are_case_insensitive() -> None:
    req = one(b"POST /a/b HTTP/1.1\r\nLIBPROCESS-FROM:   x@1.2.3.4:5  \r\n\r\n")
    assert is_message(req)
    assert classify(req) == Message("a", "b", UPID("x", "1.2.3.4", 5), b"")


# -- is_message / classify ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"POST /a/b HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n", True),
        (b"POST /a/b HTTP/1.1\r\nUser-Agent: libprocess/x@1.2.3.4:5\r\n\r\n", True),
        (b"POST /a/b HTTP/1.1\r\nUser-Agent: curl/8\r\n\r\n", False),
        (b"GET /a/b HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n", False),
        (b"POST /a/b HTTP/1.1\r\n\r\n", False),
    ],
)
def test_is_message_follows_libprocess_rule(raw: bytes, expected: bool) -> None:
    assert is_message(one(raw)) is expected


def test_sender_falls_back_to_user_agent_suffix() -> None:
    req = one(b"POST /a/b HTTP/1.1\r\nUser-Agent: libprocess/ua@1.2.3.4:5\r\n\r\n")
    assert classify(req).sender == UPID("ua", "1.2.3.4", 5)  # type: ignore[union-attr]


def test_libprocess_from_wins_over_user_agent() -> None:
    req = one(
        b"POST /a/b HTTP/1.1\r\nUser-Agent: libprocess/ua@1.2.3.4:5\r\n"
        b"Libprocess-From: lf@6.7.8.9:10\r\n\r\n"
    )
    assert classify(req).sender == UPID("lf", "6.7.8.9", 10)  # type: ignore[union-attr]


def test_query_string_is_ignored() -> None:
    req = one(b"POST /p/name?x=1&y=2 HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n")
    msg = classify(req)
    assert isinstance(msg, Message)
    assert (msg.to_id, msg.name) == ("p", "name")


def test_receiver_id_is_percent_decoded_but_name_is_not() -> None:
    req = one(b"POST /slave%281%29/a%2Fb/c%20d HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n")
    msg = classify(req)
    assert isinstance(msg, Message)
    assert msg.to_id == "slave(1)"
    assert msg.name == "a%2Fb/c%20d"


def test_path_with_only_an_id_has_an_empty_name() -> None:
    msg = classify(one(b"POST /hello HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n"))
    assert isinstance(msg, Message)
    assert (msg.to_id, msg.name) == ("hello", "")


def test_path_not_starting_with_slash_is_400() -> None:
    req = one(b"POST p/n HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n\r\n")
    result = classify(req)
    assert isinstance(result, MessageTarget)
    assert result.status == 400


def test_unparsable_sender_is_500() -> None:
    req = one(b"POST /p/n HTTP/1.1\r\nLibprocess-From: not-a-upid\r\n\r\n")
    result = classify(req)
    assert isinstance(result, MessageTarget)
    assert result.status == 500
    assert "not-a-upid" in result.reason


def test_gzip_body_is_decompressed() -> None:
    payload = b"compressed payload " * 50
    packed = gzip.compress(payload)
    req = one(
        b"POST /p/n HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
    )
    msg = classify(req)
    assert isinstance(msg, Message)
    assert msg.body == payload


def test_deflate_body_is_decompressed() -> None:
    assert decode_body({"content-encoding": "deflate"}, zlib.compress(b"abc")) == b"abc"


def test_corrupt_gzip_body_is_400() -> None:
    req = one(
        b"POST /p/n HTTP/1.1\r\nLibprocess-From: x@1.2.3.4:5\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope"
    )
    result = classify(req)
    assert isinstance(result, MessageTarget) and result.status == 400


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"\0" * 200_000)
    with pytest.raises(WireError, match="too large"):
        decode_body({"content-encoding": "gzip"}, bomb, Limits(max_body=100_000))


def test_unknown_content_encoding_is_refused() -> None:
    with pytest.raises(WireError, match="br"):
        decode_body({"content-encoding": "br"}, b"xx")


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
        b"POST /a HTTP/2.0\r\n\r\n",
        b"POST  /a HTTP/1.1\r\n\r\n",
        b"PO(ST /a HTTP/1.1\r\n\r\n",
        b"POST /a HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /a HTTP/1.1\r\nbad name: v\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    ],
)
def test_malformed_requests_raise_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        parse_all(raw)


def test_head_larger_than_the_limit_raises_even_when_incomplete() -> None:
    parser = RequestParser(Limits(max_head=1024))
    with pytest.raises(WireError, match="head too large"):
        parser.feed(b"POST /a HTTP/1.1\r\nX-Long: " + b"a" * 2000)


def test_too_many_headers_raise() -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(20))
    with pytest.raises(WireError, match="too many headers"):
        RequestParser(Limits(max_headers=10)).feed(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")


def test_bodies_over_the_limit_raise() -> None:
    limits = Limits(max_body=10)
    with pytest.raises(WireError, match="too large"):
        RequestParser(limits).feed(b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(WireError, match="too large"):
        RequestParser(limits).feed(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n"
        )


def test_incomplete_request_waits_for_more_bytes() -> None:
    parser = RequestParser()
    data = encode_message(SENDER, "p", "n", "h:1", b"body bytes")
    assert parser.feed(data[:-3]) == []
    reqs = parser.feed(data[-3:])
    assert [r.body for r in reqs] == [b"body bytes"]


def test_requests_before_bad_bytes_are_returned_and_the_error_kept() -> None:
    good = encode_message(SENDER, "p", "n", "h:1", b"ok")
    parser = RequestParser()
    reqs = parser.feed(good + good + b"NOT HTTP\r\n\r\n")
    assert [r.body for r in reqs] == [b"ok", b"ok"]
    assert isinstance(parser.error, WireError)
    with pytest.raises(WireError):
        parser.feed(b"")


def test_bad_bytes_alone_raise_at_once() -> None:
    parser = RequestParser()
    with pytest.raises(WireError):
        parser.feed(b"NOT HTTP\r\n\r\n")


# -- passthrough (hand-over to aiohttp) -----------------------------------------------


def test_passthrough_claims_a_request_and_returns_its_raw_bytes() -> None:
    msg = encode_message(SENDER, "p", "n", "h:1", b"abc")
    get = b"GET /p/vars HTTP/1.1\r\nHost: h\r\n\r\n"
    parser = RequestParser(passthrough=lambda r: not is_message(r))
    reqs = parser.feed(msg + get + b"trailing")
    assert [r.target for r in reqs] == ["/p/n"]
    assert parser.claimed
    assert parser.take_rest() == get + b"trailing"
    assert parser.feed(b"more") == []
    assert parser.take_rest() == b"more"


# -- properties -----------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz.()_-0123456789", min_size=1, max_size=20)
bodies = st.binary(max_size=300)


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    """One valid request in one of the framings a peer may use."""
    name = draw(names)
    body = draw(bodies)
    kind = draw(st.sampled_from(["libproc", "length", "chunks", "lf", "get", "http10"]))
    if kind == "libproc":
        return encode_message(SENDER, draw(names), name, "127.0.0.1:1", body)
    if kind == "length":
        return (
            b"POST /p/%s HTTP/1.1\r\nLibprocess-From: %s\r\nContent-Length: %d\r\n\r\n"
            % (name.encode(), SENDER.encode(), len(body))
            + body
        )
    if kind == "http10":
        return (
            b"POST /p/%s HTTP/1.0\r\nUser-Agent: libprocess/%s\r\nContent-Length: %d\r\n\r\n"
            % (name.encode(), SENDER.encode(), len(body))
            + body
        )
    if kind == "get":
        return b"GET /p/%s?q=1 HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode()
    sep = b"\r\n" if kind == "chunks" else b"\n"
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    chunked = b"".join(b"%x%s%s%s" % (len(p), sep, p, sep) for p in pieces)
    return (
        b"POST /p/%s HTTP/1.1%sLibprocess-From: %s%sTransfer-Encoding: chunked%s%s"
        % (name.encode(), sep, SENDER.encode(), sep, sep, sep)
        + chunked
        + b"0"
        + sep
        + sep
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request_bytes(), min_size=1, max_size=6), st.data())
def test_any_split_of_a_request_stream_yields_the_same_requests(
    requests: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(requests)
    whole = RequestParser().feed(stream)
    assert len(whole) == len(requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    parser = RequestParser()
    split: list[Request] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        split.extend(parser.feed(stream[a:b]))
    assert split == whole


def test_byte_by_byte_feeding_yields_the_same_requests() -> None:
    stream = b"".join(
        [
            encode_message(SENDER, "p", "a", "h:1", b"x" * 40),
            (
                b"POST /p/b HTTP/1.1\nLibprocess-From: x@1.2.3.4:5\nTransfer-Encoding: chunked\n\n"
                b"2\nab\n1\r\nc\r\n0\n\n"
            ),
            encode_message(SENDER, "p", "c", "h:1", b""),
        ]
    )
    whole = RequestParser().feed(stream)
    parser = RequestParser()
    split = [r for i in range(len(stream)) for r in parser.feed(stream[i : i + 1])]
    assert [r.body for r in split] == [b"x" * 40, b"abc", b""]
    assert split == whole


def _feed_and_classify(parser: RequestParser, data: bytes) -> None:
    for req in parser.feed(data):
        if is_message(req):
            classify(req)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_random_bytes_raise_nothing_but_wire_error(chunks: list[bytes]) -> None:
    parser = RequestParser(Limits(max_head=512, max_body=4096))
    try:
        for chunk in chunks:
            _feed_and_classify(parser, chunk)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(request_bytes(), st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_corrupted_requests_raise_nothing_but_wire_error(
    request: bytes, at: int, noise: bytes
) -> None:
    at = min(at, len(request))
    parser = RequestParser(Limits(max_head=512, max_body=4096))
    try:
        _feed_and_classify(parser, request[:at] + noise + request[at:])
    except WireError:
        pass
