"""The CLI's client against standbys (cli/client.py): a 307 is followed with the method,
body and secret, bounded and checked; a zk:// --master that cannot be used is one clear
error. Real HTTP servers on loopback stand in for the masters."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cli.client import MAX_REDIRECTS, ClusterError, MasterClient
from cluster_harness import free_port

Answer = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], Any]]


class Server:
    """A loopback HTTP server answering with `answer(handler, body)`; records requests."""

    def __init__(self, answer: Answer) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append((self.command, self.path, dict(self.headers), body))
                status, headers, payload = answer(self, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    try:
        yield made
    finally:
        for server in made:
            server.close()


def _leader(servers: list[Server]) -> Server:
    leader = Server(lambda h, body: (201, {}, {"ids": ["1"]}) if h.command == "POST"
                    else (200, {}, {"tasks": [], "path": h.path}))
    servers.append(leader)
    return leader


def _standby(servers: list[Server], to: str) -> Server:
    standby = Server(lambda h, body: (307, {"Location": to + h.path}, {"leader": None}))
    servers.append(standby)
    return standby


def test_a_post_is_followed_to_the_leader_with_its_body_and_secret(
        servers: list[Server]) -> None:
    leader = _leader(servers)
    standby = _standby(servers, f"http://127.0.0.1:{leader.port}")
    client = MasterClient(f"127.0.0.1:{standby.port}", secret="s3cret")
    assert client.submit([{"command": "echo hi", "name": "x"}]) == ["1"]
    method, path, headers, body = leader.seen[-1]
    assert (method, path) == ("POST", "/master/tasks")
    assert json.loads(body) == {"command": "echo hi", "name": "x"}
    assert headers["Authorization"] == "Bearer s3cret"
    assert len(standby.seen) == 1  # no retry of the redirected request at the standby


def test_a_get_keeps_its_path_and_query(servers: list[Server]) -> None:
    leader = _leader(servers)
    standby = _standby(servers, f"http://127.0.0.1:{leader.port}")
    client = MasterClient(f"127.0.0.1:{standby.port}")
    client.tasks("RUNNING,PENDING")
    asked = standby.seen[-1][1]
    assert asked.startswith("/master/tasks?") and "state=RUNNING%2CPENDING" in asked
    assert leader.seen[-1][1] == asked  # the same path and query, byte for byte


def test_redirects_in_a_loop_end_with_a_clear_error(servers: list[Server]) -> None:
    self_loop = Server(lambda h, body: (307, {"Location": h.path}, {}))
    servers.append(self_loop)
    with pytest.raises(ClusterError, match=f"more than {MAX_REDIRECTS} times"):
        MasterClient(f"127.0.0.1:{self_loop.port}").slaves()
    assert len(self_loop.seen) == MAX_REDIRECTS + 1


def test_a_redirect_to_a_master_that_is_gone_names_that_one(servers: list[Server]) -> None:
    gone = free_port()
    standby = _standby(servers, f"http://127.0.0.1:{gone}")
    with pytest.raises(ClusterError, match=f"cannot reach the master at 127.0.0.1:{gone} "):
        MasterClient(f"127.0.0.1:{standby.port}").slaves()


@pytest.mark.parametrize(("headers", "match"), [
    ({}, "without saying where"), ({"Location": "ftp://127.0.0.1/x"}, "not an http URL"),
    ({"Location": "javascript:alert(1)"}, "not an http URL")])
def test_a_bad_redirect_is_refused_with_the_reason(
        servers: list[Server], headers: dict[str, str], match: str) -> None:
    bad = Server(lambda h, body: (307, headers, {}))
    servers.append(bad)
    with pytest.raises(ClusterError, match=match):
        MasterClient(f"127.0.0.1:{bad.port}").tasks()


def test_without_zookeeper_a_503_is_reported_at_once(servers: list[Server]) -> None:
    busy = Server(lambda h, body: (503, {"Retry-After": "1"},
                                   {"error": "no master leads at the moment", "leader": None}))
    servers.append(busy)
    with pytest.raises(ClusterError, match="no master leads") as caught:
        MasterClient(f"127.0.0.1:{busy.port}").submit([{"command": "true"}])
    assert caught.value.status == 503 and len(busy.seen) == 1


@pytest.mark.parametrize(("url", "match"), [
    ("zk://127.0.0.1:2181/", "the path is the root"), ("zk://a:b:c/x", "not a host name"),
    ("zk:///cluster", "no server")])
def test_a_bad_zookeeper_url_is_one_clear_error(url: str, match: str) -> None:
    with pytest.raises(ClusterError, match=match) as caught:
        MasterClient(url).tasks()  # at once: no retry can mend it
    assert str(caught.value).startswith("--master: bad ZooKeeper URL")


def test_zookeeper_out_of_reach_says_so(servers: list[Server]) -> None:
    client = MasterClient(f"zk://127.0.0.1:{free_port()}/cluster", timeout=1.0, follow_wait=0)
    with pytest.raises(ClusterError, match="cannot find the leading master: no ZooKeeper"):
        client.tasks()
