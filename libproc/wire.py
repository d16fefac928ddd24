"""libprocess's wire format as a pure codec: messages to bytes, bytes to requests.

Sending follows DESIGN.md §2.1 to the byte. Receiving accepts every legal framing a peer may
use: chunked or Content-Length bodies (optionally gzip-encoded), HTTP/1.0 or 1.1, LF or CRLF
line ends, with or without Host or User-Agent. Sizes are bounded (`Limits`) so that one peer
cannot make us buffer without end. No sockets here and no aiohttp: this module is fed bytes
and returns values, so it is tested (and fuzzed) without a network.

Errors come in two kinds: bytes that are not HTTP at all (WireError: libprocess closes the
connection without a response), and a request whose line parsed but whose headers or framing
are invalid (BadRequest, a WireError carrying the status an HTTP server answers, 400 or 413,
and the request head when it is known). The transport answers a BadRequest on the HTTP path
and closes silently on the message path (DESIGN.md §2.1).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from libproc.errors import InvalidUPIDError, WireError
from libproc.pid import UPID

__all__ = [
    "encode_message",
    "error_response",
    "BadRequest",
    "REFUSAL_HEADER",
    "Limits",
    "Request",
    "RequestParser",
    "Message",
    "MessageTarget",
    "classify",
    "decode_body",
    "is_message",
    "RESPONSES",
]

RESPONSES = {
    202: b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
    400: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    404: b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    413: b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
    500: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
}
_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
            503: "Service Unavailable"}

# The header of the request that the transport hands aiohttp in place of a request it refused
# (`<status> <percent-encoded reason>`, status 0: close without answering), so that aiohttp
# answers it in pipeline order. Stripped from every request a peer sends.
REFUSAL_HEADER = "x-libproc-refused"


def error_response(status: int, reason: str) -> bytes:
    """A complete JSON error answer (`{"error": reason}`) that closes the connection."""
    body = json.dumps({"error": reason}).encode()
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def encode_message(sender: str, receiver_id: str, name: str, host: str, body: bytes) -> bytes:
    """One message as libprocess sends it: headers in libprocess's order, chunked body.

    `host` is the receiver's numeric `ip:port`; an empty body has no Transfer-Encoding line.
    """
    path = f"/{receiver_id}/{name}" if receiver_id else f"/{name}"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"User-Agent: libprocess/{sender}\r\n"
        f"Libprocess-From: {sender}\r\n"
        "Connection: Keep-Alive\r\n"
        f"Host: {host}\r\n"
    ).encode()
    if not body:
        return head + b"\r\n"
    return b"".join(
        (head, b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body), body, b"\r\n0\r\n\r\n")
    )


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may make us buffer."""

    max_head: int = 64 * 1024  # request line + headers
    max_body: int = 16 * 1024 * 1024  # of a message, after de-chunking and decompression
    # of any other request (the HTTP path; at most max_body): aiohttp's own cap on a body
    # that a route reads
    max_http_body: int = 1024 * 1024

    @property
    def small_body(self) -> int:
        """Bodies up to this size are within the cap of any request."""
        return min(self.max_body, self.max_http_body)
    max_headers: int = 100


@dataclass(slots=True)
class Request:
    """One parsed HTTP request (header names lower-cased)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    keep_alive: bool = True


class BadRequest(WireError):
    """A request whose line parsed but whose headers or framing are invalid.

    `status` is what an HTTP server answers (400, or 413 for a body over the cap); `request`
    is the parsed head when known (its headers may be empty when they did not parse)."""

    def __init__(self, status: int, reason: str, request: Request | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.request = request


@dataclass(frozen=True, slots=True)
class Message:
    """A libprocess message addressed to a local process id."""

    to_id: str
    name: str
    sender: UPID
    body: bytes


@dataclass(frozen=True, slots=True)
class MessageTarget:
    """A request that is a message but cannot be delivered; `status` is the answer."""

    status: int
    reason: str


_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_HEADER_CACHE: dict[bytes, dict[str, str]] = {}
_HEADER_CACHE_SIZE = 512
_SENDER_CACHE: dict[str, UPID] = {}

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER = range(5)


class RequestParser:
    """Incremental HTTP/1.x request parser. `feed(data)` returns the requests completed.

    Raises WireError for bytes that are not HTTP or break a limit (BadRequest when the
    request line parsed: see the module docstring). Requests completed before the bad bytes
    in the same `feed` are still returned (so the outcome does not depend on how TCP split
    the stream); the error is then kept in `error` and raised by the next `feed`.

    `passthrough(request)` may claim a request whose head has just been parsed: the parser
    stops, and `take_rest()` returns the raw bytes from the start of that request on, to be
    handed to another HTTP server.
    """

    __slots__ = ("limits", "_buf", "_state", "_req", "_remaining", "_chunks", "_size", "_got",
                 "_small", "_passthrough", "_claimed", "_req_start", "error")

    def __init__(
        self,
        limits: Limits | None = None,
        passthrough: Callable[[Request], bool] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._small = self.limits.small_body
        self._buf = bytearray()
        self._state = _HEAD
        self._req: Request | None = None
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._size = 0  # chunk sizes announced so far
        self._got = 0  # bytes of the chunks received whole
        self._passthrough = passthrough
        self._claimed = False
        self._req_start = 0
        self.error: WireError | None = None

    @property
    def claimed(self) -> bool:
        return self._claimed

    @property
    def partial(self) -> bool:
        """True while a request has begun but is not complete (bytes held, or a body due)."""
        return bool(self._buf) or self._state != _HEAD

    @property
    def held(self) -> int:
        """Bytes held for requests not yet complete (what a slow peer costs us)."""
        return len(self._buf) + (self._got if self._state >= _CHUNK_SIZE else 0)

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def feed(self, data: bytes) -> list[Request]:
        if self.error is not None:
            raise self.error
        if self._claimed:
            self._buf += data
            return []
        buf = self._buf
        buf += data
        out: list[Request] = []
        pos = 0
        limits = self.limits
        try:
            while True:
                state = self._state
                if state == _HEAD:
                    # Tolerate empty lines before a request line (RFC 9112 §2.2).
                    while pos < len(buf) and (buf[pos] == 13 or buf[pos] == 10):
                        if buf[pos] == 13 and not buf.startswith(b"\r\n", pos):
                            break
                        pos += 1
                    end = buf.find(b"\r\n\r\n", pos)
                    if end >= 0:
                        lf = buf.find(b"\n\n", pos, end)
                        if lf >= 0:
                            end, sep = lf, 2
                        else:
                            sep = 4
                    else:
                        end = buf.find(b"\n\n", pos)
                        sep = 2
                    if end < 0:
                        if len(buf) - pos > limits.max_head:
                            raise self._head_too_large(bytes(buf[pos:pos + 8192]))
                        break
                    if end - pos > limits.max_head:
                        raise self._head_too_large(bytes(buf[pos:pos + 8192]))
                    req = self._parse_head(bytes(buf[pos:end]))
                    self._req_start = pos
                    pos = end + sep
                    if self._passthrough is not None and self._passthrough(req):
                        self._claimed = True
                        pos = self._req_start
                        break
                    self._begin_body(req)
                    if self._state == _HEAD:
                        out.append(req)
                    elif self._state == _CHUNK_SIZE:
                        # Fast path: libprocess's single chunk, "<hex>\r\n<body>\r\n0\r\n\r\n".
                        nl = buf.find(b"\r\n", pos, pos + 18)
                        if nl > pos and _HEX.fullmatch(buf, pos, nl):
                            n = int(buf[pos:nl], 16)
                            end = nl + 2 + n
                            if (n <= self._small
                                    and buf[end : end + 7] == b"\r\n0\r\n\r\n"):
                                req.body = bytes(buf[nl + 2 : end])
                                pos = end + 7
                                out.append(self._finish())
                elif state == _LENGTH:
                    need = self._remaining
                    if len(buf) - pos < need:
                        break
                    assert self._req is not None
                    self._req.body = bytes(buf[pos : pos + need])
                    pos += need
                    out.append(self._finish())
                elif state == _CHUNK_SIZE:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if len(buf) - pos > 1024:
                            raise BadRequest(400, "chunk size line too long", self._req)
                        break
                    line = bytes(buf[pos:nl]).rstrip(b"\r").split(b";", 1)[0].strip()
                    if not _HEX.fullmatch(line):
                        raise BadRequest(400, f"bad chunk size {line[:20]!r}", self._req)
                    n = int(line, 16)
                    pos = nl + 1
                    if n == 0:
                        self._state = _TRAILER
                        continue
                    self._size += n
                    if self._size > self._small:
                        self._check_size(self._size, "chunked body")
                    self._remaining = n
                    self._state = _CHUNK_DATA
                elif state == _CHUNK_DATA:
                    need = self._remaining
                    avail = len(buf) - pos
                    if avail < need + 1:
                        break
                    end = pos + need
                    if buf.startswith(b"\r\n", end):
                        after = end + 2
                    elif buf[end] == 10:
                        after = end + 1
                    elif avail < need + 2:
                        break
                    else:
                        raise BadRequest(400, "chunk not followed by CRLF", self._req)
                    self._chunks.append(bytes(buf[pos:end]))
                    self._got += need
                    pos = after
                    self._state = _CHUNK_SIZE
                else:  # _TRAILER: lines until an empty one
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if len(buf) - pos > limits.max_head:
                            raise BadRequest(400, "trailer too large", self._req)
                        break
                    trailer = buf[pos:nl].rstrip(b"\r")
                    pos = nl + 1
                    if not trailer:
                        assert self._req is not None
                        self._req.body = b"".join(self._chunks)
                        self._chunks = []
                        out.append(self._finish())
        except WireError as exc:
            if not out:
                raise
            self.error = exc
        finally:
            if pos:
                del buf[:pos]
        return out

    def _head_too_large(self, start: bytes) -> WireError:
        """Over `max_head`: plain HTTP (a request line that parses, not a POST, which may be
        a message) is answered 431; anything else is closed without an answer."""
        why = f"request head too large: at most {self.limits.max_head} bytes"
        nl = start.find(b"\n")
        parts = (start[:nl] if nl >= 0 else b"").rstrip(b"\r").decode("latin-1").split(" ")
        if (len(parts) == 3 and parts[2] in _VERSIONS and _TOKEN.fullmatch(parts[0])
                and parts[1] and parts[0] != "POST"):
            return BadRequest(431, why, Request(parts[0], parts[1], parts[2], {}))
        return WireError(why)

    def _parse_head(self, head: bytes) -> Request:
        nl = head.find(b"\n")
        line = head if nl < 0 else head[:nl]
        block = b"" if nl < 0 else head[nl + 1 :]
        parts = line.rstrip(b"\r").decode("latin-1").split(" ")
        if len(parts) != 3:
            raise WireError(f"bad request line {line[:80]!r}")
        method, target, version = parts
        if version not in _VERSIONS or not _TOKEN.fullmatch(method) or not target:
            raise WireError(f"bad request line {line[:80]!r}")
        # A peer repeats the same header block on every message: parse each block once.
        headers = _HEADER_CACHE.get(block)
        if headers is None:
            try:
                headers = self._parse_headers(block)
            except WireError as exc:
                # Only a POST can be a libprocess message: any other method is plain HTTP,
                # answered 400. A POST whose headers do not parse may be a message: not HTTP.
                if method == "POST":
                    raise
                raise BadRequest(400, str(exc), Request(method, target, version, {})) from None
            if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[block] = headers
        conn = headers.get("connection", "").lower()
        keep_alive = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
        return Request(method, target, version, headers, b"", keep_alive)

    def _parse_headers(self, block: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        if not block:
            return headers
        lines = block.decode("latin-1").split("\n")
        if len(lines) > self.limits.max_headers:
            raise WireError("too many headers")
        for raw in lines:
            line = raw.rstrip("\r")
            colon = line.find(":")
            if colon <= 0:
                raise WireError(f"bad header line {line[:80]!r}")
            name = line[:colon]
            if not _TOKEN.fullmatch(name):
                raise WireError(f"bad header name {name[:80]!r}")
            name = name.lower()
            value = line[colon + 1 :].strip(" \t")
            if name in headers:
                # Repeated identical Content-Lengths are one; different ones join into a
                # value that is not a number, refused (400) once the request is known.
                if name != "content-length" or headers[name] != value:
                    headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        return headers

    def _begin_body(self, req: Request) -> None:
        te = req.headers.get("transfer-encoding")
        self._req = req
        if te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] != "chunked":
                raise BadRequest(400, f"unsupported Transfer-Encoding {te[:40]!r}", req)
            self._chunks = []
            self._size = self._got = 0
            self._state = _CHUNK_SIZE
            return
        cl = req.headers.get("content-length")
        if cl is not None:
            if not cl.isdigit() or not cl.isascii() or len(cl) > 15:
                raise BadRequest(400, f"bad Content-Length {cl[:20]!r}", req)
            n = int(cl)
            if n > self._small:
                self._check_size(n, f"Content-Length {n}")
            if n:
                self._remaining = n
                self._state = _LENGTH
                return
        self._req = None
        self._state = _HEAD

    def _check_size(self, n: int, what: str) -> None:
        """Raise 413 when a body of `n` bytes is over the cap of its request's kind."""
        req = self._req
        assert req is not None
        cap = self.limits.max_body if is_message(req) else self.limits.small_body
        if n > cap:
            raise BadRequest(413, f"body too large: {what} is over the limit of {cap} bytes",
                             req)

    def _finish(self) -> Request:
        req = self._req
        assert req is not None
        self._req = None
        self._state = _HEAD
        return req


def is_message(req: Request) -> bool:
    """libprocess's rule: a POST with Libprocess-From, or a User-Agent `libprocess/...`."""
    if req.method != "POST":
        return False
    h = req.headers
    return "libprocess-from" in h or h.get("user-agent", "").startswith("libprocess/")


def decode_body(headers: dict[str, str], body: bytes, limits: Limits | None = None) -> bytes:
    """Undo a gzip/deflate Content-Encoding, bounded by `limits.max_body`."""
    coding = headers.get("content-encoding", "").strip().lower()
    if not coding or coding == "identity" or not body:
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise WireError(f"unsupported Content-Encoding {coding[:40]!r}")
    max_body = (limits or Limits()).max_body
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_body + 1)
    except zlib.error as exc:
        raise WireError(f"bad {coding} body: {exc}") from exc
    if len(out) > max_body or d.unconsumed_tail:
        raise WireError("decompressed body too large")
    return out


def classify(req: Request, limits: Limits | None = None) -> Message | MessageTarget:
    """Turn a message request into a Message, or the status to answer it with."""
    target = req.target
    if not target.startswith("/"):
        return MessageTarget(400, "path does not start with '/'")
    q = target.find("?")
    path = target if q < 0 else target[:q]
    h = req.headers
    sender_text = h.get("libprocess-from")
    if sender_text is None:
        sender_text = h.get("user-agent", "")[len("libprocess/") :]
    sender = _SENDER_CACHE.get(sender_text)
    if sender is None:
        try:
            sender = UPID.parse(sender_text.strip())
        except InvalidUPIDError as exc:
            return MessageTarget(500, str(exc))
        if len(_SENDER_CACHE) >= _HEADER_CACHE_SIZE:
            _SENDER_CACHE.clear()
        _SENDER_CACHE[sender_text] = sender
    slash = path.find("/", 1)
    if slash < 0:
        to_id, name = path[1:], ""
    else:
        to_id, name = path[1:slash], path[slash + 1 :]
    try:
        body = decode_body(h, req.body, limits)
    except WireError as exc:
        return MessageTarget(400, str(exc))
    return Message(unquote(to_id), name, sender, body)
