"""The master's HTTP API under hostile input and storage faults, over real sockets.

A real libproc runtime on 127.0.0.1 (port 0), a real master on a real SQLite file, and
aiohttp (or a raw socket) as the client. Every input problem must be a 4xx with a JSON
`{"error": ...}`, never a 500; an error answer leaves no task anywhere; a kill or a result is
answered or acknowledged only once it is committed to the file the master opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import libproc
from cluster_harness import Cluster, MasterClient, cluster  # noqa: F401 - a fixture
from libproc import Clock
from master.process import Master, MasterConfig
from master.store import Store
from protos import cluster_pb2 as pb
from test_master_actor import FakeSlave, register
from waiting import until


@dataclass
class Env:
    master: Master
    store: Store
    db: Path
    base: str
    port: int
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, data=body,
                                     headers=headers) as resp:
            data = await resp.read()
            try:
                return resp.status, json.loads(data)
            except ValueError:
                return resp.status, data

    def rows(self) -> dict[str, str]:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT id, state FROM tasks").fetchall())


async def _start(tmp_path: Path, secret: str | None = None) -> AsyncIterator[Env]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    db = tmp_path / "master.db"
    store = Store.open(str(db), probe_interval=0.05, busy_timeout=0.5)
    master = Master(store, MasterConfig(secret=secret))
    libproc.spawn(master)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        yield Env(master, store, db, f"http://127.0.0.1:{address.port}", address.port, http)
    finally:
        await http.close()
        await libproc.stop()
        await store.close()
        Clock.reset()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _start(tmp_path):
        yield e


def _json_error(status: int, body: Any) -> str:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return str(body["error"])


# -- input that cannot hurt ------------------------------------------------------------

HOSTILE_BODIES = [
    b'{"command": "echo \\ud800"}',
    b'{"command": "echo hi", "name": "\\udfff"}',
    b'[{"command": "ok"}, {"command": "x", "name": "\\ud800"}]',
    b'{"command": "echo hi", "name": "a\\u0000b"}',
    b'{"command": "echo a\\u0000b"}',
    b'{"command": "x", "cpus": NaN}',
    b'{"command": "x", "mem": Infinity}',
    b'{"command": "x", "timeout": -Infinity}',
    b'{"command": "x", "cpus": 1' + b"0" * 400 + b"}",
    b'{"command": "x", "mem": 1' + b"0" * 400 + b"}",
    b'{"command": "x", "timeout": 1' + b"0" * 400 + b"}",
    b'{"command": "x", "retries": 1' + b"0" * 400 + b"}",
    b'{"command": "x", "retries": 1' + b"0" * 5000 + b"}",
    b'{"command": "x", "timeout": 1e400}',
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 30_000 + b"1" + b"}" * 30_000,
    b"\xff\xfe\x00{",
    b"",
    b"null",
    b"[]",
    b'"\\ud800"',
    b'{"\\ud800": 1, "command": "x"}',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=lambda b: repr(b[:30]))
async def test_hostile_submit_bodies_get_a_4xx_json_error_and_create_nothing(
        env: Env, body: bytes) -> None:
    status, answer = await env.call("POST", "/master/tasks", body,
                                    {"Content-Type": "application/json"})
    _json_error(status, answer)
    assert env.master.tasks == {} and env.rows() == {}
    status, answer = await env.call("POST", "/master/tasks", b'{"command": "true"}')
    assert (status, answer) == (201, {"ids": ["1"]})  # and no id was used up


HOSTILE_REQUESTS = [
    ("GET", "/master/tasks?state=%00"),
    ("GET", "/master/tasks?state=%ED%A0%80"),
    ("GET", "/master/tasks?state=BOGUS"),
    ("GET", "/master/tasks?state=,,,"),
    ("GET", "/master/tasks/%00"),
    ("GET", "/master/tasks/%00/kill"),
    ("GET", "/master/tasks/a%07b"),
    ("GET", "/master/tasks/" + "9" * 5000),
    ("GET", "/master/tasks/%ED%A0%80"),
    ("GET", "/master/tasks/%FF"),
    ("GET", "/master/tasks/%2531"),  # decoded once is "%31", not task 1
    ("GET", "/master/tasks/1/bogus"),
    ("GET", "/master/tasks/1/kill"),
    ("PUT", "/master/tasks/1/kill"),
    ("DELETE", "/master/tasks/1"),
    ("POST", "/master/tasks/1"),
    ("POST", "/master/tasks/1/logs"),
    ("DELETE", "/master/tasks"),
    ("PATCH", "/master/tasks"),
    ("GET", "/master/tasks/1/logs?offset=-1"),
    ("GET", "/master/tasks/1/logs?offset=1e9"),
    ("GET", "/master/tasks/1/logs?limit=" + "9" * 40),
    ("GET", "/master/tasks/1/logs?stream=/etc/passwd"),
    ("GET", "/master/%ff"),
    ("GET", "/master/tasks/%2e%2e/%2e%2e/vars"),
    ("POST", "/master/tasks/999/kill"),
]


@pytest.mark.parametrize(("method", "path"), HOSTILE_REQUESTS, ids=lambda x: x[:40])
async def test_hostile_paths_queries_and_methods_get_a_4xx_json_error(
        env: Env, method: str, path: str) -> None:
    status, answer = await env.call("POST", "/master/tasks", b'{"command": "true"}')
    assert status == 201
    status, answer = await env.call(method, path)
    _json_error(status, answer)
    assert env.master.tasks["1"].state == "PENDING"  # nothing was changed by it


async def test_a_body_over_the_cap_is_a_413_json_answer(env: Env) -> None:
    big = b'[{"command": "' + b"x" * (2 * 1024 * 1024) + b'"}]'
    status, answer = await env.call("POST", "/master/tasks", big)
    # Refused by the transport as soon as the head arrives (libproc's HTTP body cap).
    assert status == 413 and "limit of 1048576 bytes" in _json_error(status, answer)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own cap
        for _ in range(24):
            yield b" " * 65536

    status, answer = await env.call("POST", "/master/tasks", chunks())  # type: ignore[arg-type]
    assert status == 413 and "limit of 1048576 bytes" in _json_error(status, answer)
    assert env.master.tasks == {}
    assert (await env.call("GET", "/master/tasks"))[0] == 200  # the master serves on


async def test_many_tasks_at_once_are_accepted_up_to_the_limit(env: Env) -> None:
    body = json.dumps([{"command": "true"}] * 2000).encode()
    status, answer = await env.call("POST", "/master/tasks", body)
    assert status == 201 and answer["ids"] == [str(i) for i in range(1, 2001)]
    assert len(env.rows()) == 2000


async def test_the_api_secret_is_checked_in_constant_time_on_bytes(tmp_path: Path) -> None:
    async for e in _start(tmp_path, secret="s3cr\u00e9t"):
        body = b'{"command": "true"}'
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Cluster-Secret": "s3cr"},
                        {"Authorization": "Basic s3cr\u00e9t"}):
            status, answer = await e.call("POST", "/master/tasks", body, headers)
            assert status == 401 and "secret" in _json_error(status, answer)
        # Raw header bytes that are not UTF-8 (nor the secret): 401, not a 500.
        raw = (b"POST /master/tasks HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: \xff\xfe\x80\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        writer.write(raw)
        head = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 401"), head
        secret = "s3cr\u00e9t"  # aiohttp sends it as UTF-8 bytes: compared as bytes
        for headers in ({"Authorization": f"Bearer {secret}"}, {"X-Cluster-Secret": secret}):
            status, answer = await e.call("POST", "/master/tasks", body, headers)
            assert status == 201, answer
        assert len(e.master.tasks) == 2


async def test_concurrent_clients_with_bad_input_do_not_fail_each_other(env: Env) -> None:
    good = [json.dumps({"command": f"echo {i}", "name": f"t{i}"}).encode() for i in range(30)]
    bad = [b'{"command": "echo \\ud800"}', b'{"command": "x", "name": "a\\u0000"}',
           b'{"command": "x", "cpus": 1' + b"0" * 400 + b"}"] * 4
    results = await asyncio.gather(*[env.call("POST", "/master/tasks", b) for b in good + bad])
    ids = [i for status, answer in results[:30] for i in answer["ids"]]
    assert [status for status, _ in results] == [201] * 30 + [400] * 12
    assert sorted(ids, key=int) == [str(i) for i in range(1, 31)]
    assert set(env.master.tasks) == set(ids) == set(env.rows())


# -- atomic submits and kills --------------------------------------------------------------


async def test_a_submit_the_database_cannot_take_is_503_and_leaves_no_task(env: Env) -> None:
    assert (await env.call("POST", "/master/tasks", b'{"command": "true"}'))[0] == 201
    aside = env.db.with_name("aside.db")
    os.rename(env.db, aside)
    try:
        for _ in range(5):
            status, answer = await env.call("POST", "/master/tasks",
                                            b'[{"command": "a"}, {"command": "b"}]')
            assert status == 503 and "none was created" in answer["error"]
            assert "gone" in answer["error"]
        assert set(env.master.tasks) == {"1"}
        assert [r.id for r in env.master._index.pending(env.master.tasks)] == ["1"]
    finally:
        os.rename(aside, env.db)
    assert env.rows() == {"1": "PENDING"}
    status, answer = await env.call("POST", "/master/tasks", b'{"command": "true"}')
    assert (status, answer) == (201, {"ids": ["2"]})  # the failed submits used no id
    assert env.rows() == {"1": "PENDING", "2": "PENDING"}


async def test_killing_a_pending_task_answers_only_once_killed_is_committed(env: Env) -> None:
    status, answer = await env.call("POST", "/master/tasks", b'{"command": "sleep 1"}')
    [tid] = answer["ids"]
    os.chmod(env.db, 0o444)
    try:
        status, answer = await env.call("POST", f"/master/tasks/{tid}/kill")
        assert status == 503 and "nothing changed" in answer["error"]
        assert "read-only" in answer["error"]
        rec = env.master.tasks[tid]
        assert rec.state == "PENDING" and rec.finished_at is None
        assert [r.id for r in env.master._index.pending(env.master.tasks)] == [tid]
        assert (await env.call("GET", f"/master/tasks/{tid}"))[1]["state"] == "PENDING"
    finally:
        os.chmod(env.db, 0o644)
    assert env.rows()[tid] == "PENDING"
    answers = await asyncio.gather(*[env.call("POST", f"/master/tasks/{tid}/kill")
                                     for _ in range(20)])
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {202, 409} and statuses.count(202) >= 1, answers
    for status, answer in answers:
        if status == 202:
            assert answer == {"id": tid, "state": "KILLED"}
    assert env.rows()[tid] == "KILLED"  # durable before any 202 went out


async def test_a_result_is_not_acknowledged_while_its_save_failed(env: Env) -> None:
    slave = FakeSlave(env.db)
    libproc.spawn(slave)
    await register(env.master, slave)
    status, answer = await env.call("POST", "/master/tasks", b'{"command": "true"}')
    [tid] = answer["ids"]
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    aside = env.db.with_name("aside.db")
    os.rename(env.db, aside)
    try:
        slave.update(env.master.pid, tid, pb.FINISHED, exit_code=0)
        await until(lambda: tid in env.master._dirty)  # its save failed
        seen = env.master._counters["status_updates"]
        for _ in range(2):  # the slave re-sends until acknowledged: duplicates now
            slave.update(env.master.pid, tid, pb.FINISHED, exit_code=0)
        await until(lambda: env.master._counters["status_updates"] == seen + 2)
        await asyncio.sleep(0.1)
        await Clock.settle()
        assert slave.of(pb.StatusUpdateAcknowledgementMessage) == []
        assert env.master.tasks[tid].state == "FINISHED"
        Clock.advance(env.master.config.heartbeat_interval)  # no re-save while faulted
        await Clock.settle()
        assert tid in env.master._dirty
    finally:
        os.rename(aside, env.db)
    await until(lambda: env.store.fault() is None)
    Clock.advance(env.master.config.heartbeat_interval)  # the heartbeat re-saves it
    await until(lambda: env.rows().get(tid) == "FINISHED")
    again = slave.update(env.master.pid, tid, pb.FINISHED, exit_code=0)
    await until(lambda: again in slave.state_at_ack)
    assert set(slave.state_at_ack.values()) == {"FINISHED"}  # only ever acked when durable


# -- health ----------------------------------------------------------------------------


async def test_health_and_vars_report_a_database_fault_and_its_recovery(env: Env) -> None:
    status, health = await env.call("GET", "/health")
    assert status == 200 and health["healthy"] is True
    assert health["checks"] == {"master.store": "ok"}
    aside = env.db.with_name("aside.db")
    os.rename(env.db, aside)
    try:
        status, health = await env.call("GET", "/health")
        assert status == 503 and health["healthy"] is False
        assert "gone" in health["reason"] and str(env.db) in health["checks"]["master.store"]
        status, text = await env.call("GET", "/master/vars")
        lines = dict(line.split(" ", 1) for line in text.decode().splitlines())
        assert lines["store_healthy"] == "0" and str(env.db) in lines["store_fault"]
        state = (await env.call("GET", "/master/state"))[1]
        assert state["store"]["healthy"] is False and "gone" in state["store"]["fault"]
    finally:
        os.rename(aside, env.db)

    async def healthy() -> bool:
        return (await env.call("GET", "/health"))[0] == 200

    for _ in range(200):
        if await healthy():
            break
        await asyncio.sleep(0.05)
    status, text = await env.call("GET", "/master/vars")
    assert status == 200 and "store_healthy 1\n" in text.decode()
    assert "store_fault -\n" in text.decode()



# -- the slave's /logs and the master's proxy for it, with real processes ---------------

SLAVE_LOG_QUERIES = [
    "", "task_id=", "task_id=%00", "task_id=a%00b", "task_id=%ED%A0%80", "task_id=a%07",
    "task_id=" + "x" * 300, "task_id=" + "%C3%A9" * 200, "task_id=../../etc",
    "task_id=1&attempt=-1", "task_id=1&attempt=1e3", "task_id=1&attempt=" + "9" * 30,
    "task_id=1&attempt=99999999999999", "task_id=1&offset=-5", "task_id=1&offset=0x10",
    "task_id=1&offset=" + "9" * 19, "task_id=1&offset=" + "9" * 400, "task_id=1&limit=-1",
    "task_id=1&limit=%EF%BC%91", "task_id=1&stream=stdin", "task_id=1&stream=../../x",
    "task_id=nosuch", "task_id=1&attempt=7",
]


def test_the_slave_log_endpoint_answers_bad_parameters_with_a_4xx(cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave()
    api = cluster.api
    tid = api.submit_one("echo hello")
    api.wait_state(tid, "FINISHED", timeout=30)
    direct = MasterClient(slave.port)
    for query in SLAVE_LOG_QUERIES:
        status, _, body = direct.request("GET", f"/slave(1)/logs?{query}")
        assert status in (400, 404), (query, status, body[:200])
        assert isinstance(json.loads(body)["error"], str)
    status, headers, body = direct.request("GET", f"/slave(1)/logs?task_id={tid}&offset="
                                           + str(2**63 - 1))
    assert status == 200 and body == b"" and headers["X-Log-Eof"] == "1"
    assert api.logs(tid) == b"hello\n"
    for query in ("offset=-1", "offset=1e9", "limit=" + "9" * 40, "stream=/etc/passwd",
                  "offset=%00"):
        status, _, body = api.request("GET", f"/master/tasks/{tid}/logs?{query}")
        assert status == 400 and json.loads(body)["error"], (query, status, body)
    assert cluster.master is not None
    for child in (cluster.master, slave):
        assert child.alive() and "Traceback" not in child.output(), child.output()


_PATHS = ["/master/tasks", "/master/tasks/{id}", "/master/tasks/{id}/kill",
          "/master/tasks/{id}/logs", "/master/state", "/master/slaves", "/master/vars",
          "/vars", "/health", "/tasks", "/tasks/{id}", "/master", "/master/", "/",
          "/__processes__", "/metrics/snapshot", "/slave(1)/logs", "/names/x"]
_IDS = ["1", "0", "-1", "%00", "%ff", "%ED%A0%80", "9" * 300, "..", "%2e%2e", "1%2Fkill",
        "%2531", "a%20b", "%0d%0aX-Injected:%201", "1;x", "%EF%BC%91"]
_QUERIES = ["", "?state=", "?state=RUNNING", "?state=%00", "?state=x,,y", "?offset=-1",
            "?offset=99999999999999999999", "?limit=0", "?stream=stderr", "?stream=%00",
            "?task_id=%00", "?a=%ZZ", "?" + "a=1&" * 500, "?state=running%ED%A0%80"]
_BODIES = [b"", b"{}", b"[]", b"null", b"[{}]", b'{"command": 1}', b"\x00" * 10,
           b'{"command": "true", "cpus": 1e-320}', b'{"command": "true", "mem": -0.0}',
           b'{"command": "true", "retries": true}', b'{"command": "true", "timeout": null}',
           b'{"command": "true", "name": null}', b'{"command": " "}', b"[" * 40 + b"]" * 40,
           b'{"command": "true", "cpus": 1024.0000001}', b"\xef\xbb\xbf{}",
           b'{"command": "\\ud800\\udc00 ok"}', b'{"command": "true"}' * 3]


def _raw(port: int, method: str, target: str, body: bytes) -> int:
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1."), (method, target, data[:100])
    return int(data.split(b" ", 2)[1])


_SLAVE_PATHS = ["/slave(1)/logs", "/slave(1)/vars", "/slave(1)/tasks", "/slave(1)/",
                "/slave(1)/logs/{id}", "/slave(2)/logs", "/health"]


def test_a_fuzzed_mix_of_requests_never_gets_a_500(cluster: Cluster) -> None:
    cluster.start_master()
    slave = cluster.start_slave()
    api = cluster.api
    tid = api.submit_one("echo hi")
    api.wait_state(tid, "FINISHED", timeout=30)
    rng = random.Random(12)
    statuses: dict[int, int] = {}
    for i in range(800):
        on_slave = i % 4 == 3
        path = rng.choice(_SLAVE_PATHS if on_slave else _PATHS).replace(
            "{id}", rng.choice(_IDS + [tid] * 5))
        query = rng.choice(_QUERIES + [f"?task_id={tid}&offset=-1", f"?task_id={tid}"])
        method = rng.choice(["GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "PATCH"])
        body = rng.choice(_BODIES) if method in ("POST", "PUT", "PATCH") else b""
        port = slave.port if on_slave else cluster.master_port
        status = _raw(port, method, path + query, body)
        assert status < 500, (port, method, path + query, body, status)
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(201, 0) > 0 and statuses.get(400, 0) > 0 and statuses.get(404, 0) > 0
    assert cluster.master is not None
    for child in (cluster.master, slave):
        assert child.alive() and "Traceback" not in child.output(), child.output()
    assert api.task(tid)["state"] == "FINISHED"
