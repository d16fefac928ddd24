"""The master's endpoints on aiohttp's router, over real sockets against a real master.

Unknown paths and methods are JSON 404/405 (with `Allow`), writes from a browser page of
another site are refused, the dashboard is served at `/`, and `GET /master/events` streams
what happens to tasks and slaves as it happens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import libproc
from cluster_harness import Cluster, cluster  # noqa: F401 - a fixture
from protos import cluster_pb2 as pb
from test_master_actor import FakeSlave, register
from test_master_hostile_http import Env, _start
from waiting import until


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _start(tmp_path):
        yield e


async def test_unknown_paths_and_methods_are_json_errors(env: Env) -> None:
    status, body = await env.call("GET", "/master/nothing")
    assert status == 404 and "no endpoint" in body["error"]
    async with env.http.delete(env.base + "/master/tasks") as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
        assert "DELETE is not allowed" in (await resp.json())["error"]
    async with env.http.get(env.base + "/master/tasks/1/kill") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
    status, body = await env.call("GET", "/master/tasks/12345")
    assert status == 404 and "no task" in body["error"]


async def test_vars_and_state_are_served(env: Env) -> None:
    async with env.http.get(env.base + "/master/vars") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert "tasks_total 0" in await resp.text()
    status, state = await env.call("GET", "/master/state")
    assert status == 200 and state["slaves"] == [] and state["store"]["healthy"] is True


def test_a_master_process_serves_vars_and_the_dashboard_at_the_root(cluster: Cluster) -> None:
    cluster.start_master()
    api = cluster.api
    status, headers, body = api.request("GET", "/vars")
    assert status == 200 and b"tasks_total 0" in body
    status, headers, body = api.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<html" in body.lower()
    for path in ("/dashboard/..%2Fmaster.db", "/dashboard/nothing.js", "/nothing"):
        status, headers, body = api.request("GET", path)
        assert status == 404 and "error" in json.loads(body), path


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port on the same host is another origin
])
async def test_writes_from_another_site_are_refused(env: Env, headers: dict[str, str]) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    status, body = await env.call("POST", "/master/tasks", b'{"command": "true"}', form)
    assert status == 403 and "cross-site" in body["error"]
    assert env.master.tasks == {}


async def test_writes_from_this_origin_and_from_clients_are_taken(env: Env) -> None:
    same = {"Origin": env.base, "Sec-Fetch-Site": "same-origin"}
    status, body = await env.call("POST", "/master/tasks", b'{"command": "true"}', same)
    assert status == 201, body
    status, body = await env.call("POST", "/master/tasks", b'{"command": "true"}')
    assert status == 201, body
    assert len(env.master.tasks) == 2


async def _events(env: Env, got: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async with env.http.get(env.base + "/master/events") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        ready.set()
        async for line in resp.content:
            if line.startswith(b"data:"):
                got.append(json.loads(line[5:]))


async def test_the_event_stream_tells_of_tasks_progress_and_slaves(env: Env) -> None:
    got: list[dict[str, Any]] = []
    ready = asyncio.Event()
    reader = asyncio.create_task(_events(env, got, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        slave = FakeSlave()
        libproc.spawn(slave)
        await register(env.master, slave)
        status, body = await env.call("POST", "/master/tasks", b'{"command": "sleep 9"}')
        [tid] = body["ids"]
        await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
        slave.update(env.master.pid, tid, pb.RUNNING)
        slave.signed(env.master.pid, pb.ReportProgressMessage(
            slave_id=pb.SlaveID(value=slave.slave_id),
            tasks=[pb.Task(name="x", task_id=pb.TaskID(value=tid), progress=0.5, attempt=1)]))

        def states() -> list[str]:
            return [e["task"]["state"] for e in got if e["type"] == "task"]

        await until(lambda: states()[-1:] == ["RUNNING"])
        assert states() == ["PENDING", "STAGING", "RUNNING"]
        assert any(e["type"] == "slave" and e["slave"]["id"] == slave.slave_id for e in got)
        await until(lambda: any(e["type"] == "progress" for e in got), timeout=15)
        progress = next(e for e in got if e["type"] == "progress")
        assert progress["tasks"][0]["id"] == tid and progress["tasks"][0]["progress"] == 0.5
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_a_write_without_the_secret_is_refused(tmp_path: Path) -> None:
    async for e in _start(tmp_path, secret="s3cret"):
        status, body = await e.call("POST", "/master/tasks/1/kill")
        assert status == 401 and "secret" in body["error"]
        ok = {"Authorization": "Bearer s3cret"}
        status, body = await e.call("POST", "/master/tasks", b'{"command": "x"}', ok)
        assert status == 201
        async with aiohttp.ClientSession() as plain:  # reads stay open
            async with plain.get(e.base + "/master/tasks") as resp:
                assert resp.status == 200
