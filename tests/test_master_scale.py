"""The master with bounded memory: paged listing, bulk kill, restart, retention, /metrics.

A real libproc runtime on 127.0.0.1 (port 0), a real master on a real SQLite file, aiohttp
as the client, small numbers and a small `max_completed_tasks`, the paused Clock for the
heartbeat and the retention.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import libproc
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
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.request(method, self.base + path, data=data,
                                     headers=headers) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode()

    async def submit(self, *names: str) -> list[str]:
        status, answer = await self.call("POST", "/master/tasks",
                                         [{"command": "true", "name": n} for n in names])
        assert status == 201, answer
        return [str(i) for i in answer["ids"]]

    async def vars(self) -> dict[str, str]:
        status, text = await self.call("GET", "/master/vars")
        assert status == 200
        return dict(line.split(" ", 1) for line in text.splitlines())

    def rows(self) -> dict[str, str]:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT id, state FROM tasks").fetchall())

    async def heartbeat(self) -> None:
        Clock.advance(self.master.config.heartbeat_interval)
        await Clock.settle()


async def _start(db: Path, config: MasterConfig) -> AsyncIterator[Env]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0, delegate="master")  # as main.py
    Clock.pause()
    store = Store.open(str(db), probe_interval=0.05, busy_timeout=0.5)
    master = Master(store, config)
    libproc.spawn(master)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        yield Env(master, store, db, f"http://127.0.0.1:{address.port}", http)
    finally:
        await http.close()
        await libproc.stop()
        await store.close()
        Clock.reset()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _start(tmp_path / "master.db", MasterConfig(max_completed_tasks=3)):
        yield e


# -- the paged listing (contract) --------------------------------------------------------


async def test_listing_pages_follow_next_to_every_task_in_id_order(env: Env) -> None:
    ids = await env.submit(*[f"t{i}" for i in range(25)])
    status, page = await env.call("GET", "/master/tasks?limit=10")
    assert status == 200 and set(page) == {"tasks", "total", "next"}
    assert page["total"] == 25 and [t["id"] for t in page["tasks"]] == ids[:10]
    seen, path = [], "/master/tasks?limit=10"
    while path:
        status, page = await env.call("GET", path)
        assert status == 200 and page["total"] == 25
        seen += [t["id"] for t in page["tasks"]]
        path = page["next"]
    assert seen == ids
    status, page = await env.call("GET", "/master/tasks?limit=7&offset=20&order=desc")
    assert [t["id"] for t in page["tasks"]] == ids[::-1][20:25] and page["next"] is None
    status, page = await env.call("GET", "/master/tasks")  # the default limit holds them all
    assert [t["id"] for t in page["tasks"]] == ids and page["next"] is None
    status, page = await env.call("GET", "/master/tasks?offset=99")
    assert page == {"tasks": [], "total": 25, "next": None}


async def test_listing_filters_by_states_and_name_prefix(env: Env) -> None:
    builds = await env.submit("build-1", "build-2", "build-3")
    tests = await env.submit("test-1", "test-2")
    status, answer = await env.call("POST", "/master/tasks/kill", {"ids": [builds[0], tests[0]]})
    assert (status, answer) == (200, {"killed": 2})
    status, page = await env.call("GET", "/master/tasks?state=killed")
    assert [t["id"] for t in page["tasks"]] == [builds[0], tests[0]] and page["total"] == 2
    status, page = await env.call("GET", "/master/tasks?name=build-&order=desc&limit=2")
    assert [t["id"] for t in page["tasks"]] == builds[::-1][:2] and page["total"] == 3
    assert page["next"] == "/master/tasks?limit=2&offset=2&name=build-&order=desc"
    status, page = await env.call("GET", page["next"])
    assert [t["id"] for t in page["tasks"]] == [builds[0]] and page["next"] is None
    status, page = await env.call("GET", "/master/tasks?state=PENDING,KILLED&name=test")
    assert [(t["id"], t["state"]) for t in page["tasks"]] == [(tests[0], "KILLED"),
                                                              (tests[1], "PENDING")]
    status, page = await env.call("GET", "/master/tasks?name=nobody")
    assert page == {"tasks": [], "total": 0, "next": None}


async def test_pages_located_in_memory_match_the_database(env: Env) -> None:
    ids = await env.submit(*[f"n{i}" for i in range(1200)])  # ids of 1 to 4 digits
    await until(lambda: env.master._index.positions.ready)
    status, answer = await env.call("POST", "/master/tasks/kill", {"ids": ids[::3]})
    assert answer == {"killed": 400}
    rows = env.rows()
    for states in (None, "KILLED", "PENDING", "PENDING,KILLED"):
        wanted = [t for t in ids if states is None or rows[t] in states.split(",")]
        for order in ("asc", "desc"):
            listed = wanted if order == "asc" else wanted[::-1]
            for offset in (0, 5, 333, 399, 790, 999, 1100, 1195):
                query = f"limit=10&offset={offset}&order={order}"
                status, page = await env.call(
                    "GET", f"/master/tasks?{query}" + (f"&state={states}" if states else ""))
                assert status == 200 and page["total"] == len(wanted)
                assert [t["id"] for t in page["tasks"]] == listed[offset:offset + 10], query


async def test_a_name_every_task_has_pages_as_no_filter_and_one_that_differs_ends_that(
        env: Env) -> None:
    """A prefix all tasks share is answered from the master's counts (it filters nothing);
    once one task's name differs, the same query is counted and walked in the database:
    the answers are the same pages either way."""
    ids = await env.submit(*[f"job-{i}" for i in range(1200)])
    await until(lambda: env.master._index.positions.ready)
    await env.call("POST", "/master/tasks/kill", {"ids": ids[::4]})
    rows = env.rows()

    async def check(wanted: list[str], states: str | None) -> None:
        for order in ("asc", "desc"):
            listed = wanted if order == "asc" else wanted[::-1]
            for offset in (0, 299, 650, 1190):
                query = f"limit=10&offset={offset}&order={order}&name=job-"
                status, page = await env.call(
                    "GET", f"/master/tasks?{query}" + (f"&state={states}" if states else ""))
                assert status == 200 and page["total"] == len(wanted), query
                assert [t["id"] for t in page["tasks"]] == listed[offset:offset + 10], query

    for states in (None, "KILLED", "PENDING"):
        await check([t for t in ids if states is None or rows[t] == states], states)
    other = await env.submit("other")
    more = await env.submit("job-last")
    for states in (None, "PENDING"):
        wanted = [t for t in ids + more if states is None or (rows.get(t) or "PENDING") == states]
        await check(wanted, states)
    status, page = await env.call("GET", "/master/tasks?name=job-&offset=1199&limit=5")
    assert other[0] not in [t["id"] for t in page["tasks"]]
    assert [t["id"] for t in page["tasks"]] == [ids[-1], more[0]]


@pytest.mark.parametrize("query", ["limit=10001", "limit=-1", "limit=x", "offset=-5",
                                   "offset=1e3", "order=up", "state=BOGUS", "name=a%00b",
                                   "name=" + "n" * 300, "limit=" + "9" * 40])
async def test_a_bad_listing_query_is_a_400_that_says_why(env: Env, query: str) -> None:
    status, answer = await env.call("GET", f"/master/tasks?{query}")
    assert status == 400 and isinstance(answer["error"], str) and answer["error"], answer


# -- bounded memory ----------------------------------------------------------------------


async def test_ended_tasks_past_the_cap_leave_memory_and_are_read_from_the_database(
        env: Env) -> None:
    ids = await env.submit(*[f"job-{i}" for i in range(10)])
    status, answer = await env.call("POST", "/master/tasks/kill", {"state": ["PENDING"]})
    assert (status, answer) == (200, {"killed": 10})
    assert env.rows() == dict.fromkeys(ids, "KILLED")  # committed before the answer
    await env.heartbeat()
    assert set(env.master.tasks) == set(ids[-3:])  # only the newest 3 ended ones stay
    v = await env.vars()
    assert (v["tasks_killed"], v["tasks_total"], v["tasks_in_memory"]) == ("10", "10", "3")
    status, task = await env.call("GET", f"/master/tasks/{ids[0]}")  # from the database
    assert status == 200 and task["state"] == "KILLED" and task["name"] == "job-0"
    status, answer = await env.call("POST", f"/master/tasks/{ids[0]}/kill")
    assert status == 409 and "already KILLED" in answer["error"]
    status, answer = await env.call("POST", "/master/tasks/12345/kill")
    assert status == 404 and "no task" in answer["error"]
    status, page = await env.call("GET", "/master/tasks?state=KILLED&limit=4&offset=2")
    assert [t["id"] for t in page["tasks"]] == ids[2:6] and page["total"] == 10
    status, answer = await env.call("GET", f"/master/tasks/{ids[0]}/logs")
    assert status == 404 and "not been launched" in answer["error"]  # read from the database


async def test_a_restart_loads_only_unended_tasks_and_counts_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "master.db"
    async for env in _start(db, MasterConfig(max_completed_tasks=2)):
        ended = await env.submit(*[f"old-{i}" for i in range(6)])
        assert (await env.call("POST", "/master/tasks/kill", {"name": "old-"}))[1] == {
            "killed": 6}
        waiting = await env.submit("new-1", "new-2")
    with sqlite3.connect(db) as conn:  # a database from before the listing's indexes
        conn.execute("DROP INDEX ix_tasks_order")
    async for env in _start(db, MasterConfig(max_completed_tasks=2)):
        v = await env.vars()  # answered after initialize()
        assert set(env.master.tasks) == set(waiting)
        assert (v["tasks_pending"], v["tasks_killed"], v["tasks_total"]) == ("2", "6", "8")
        status, page = await env.call("GET", "/master/tasks?order=desc&limit=3")
        assert [t["id"] for t in page["tasks"]] == (ended + waiting)[::-1][:3]
        assert page["total"] == 8
    with sqlite3.connect(db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                              "type = 'index'")}
    assert "ix_tasks_order" in indexes  # put back by the master that opened it


# -- bulk kill (contract) ----------------------------------------------------------------


async def test_bulk_kill_counts_only_live_tasks_it_reached(env: Env) -> None:
    ids = await env.submit("a-1", "a-2", "b-1")
    status, answer = await env.call("POST", "/master/tasks/kill",
                                    {"ids": [ids[0], ids[0], "999", ids[2]]})
    assert (status, answer) == (200, {"killed": 2})
    status, answer = await env.call("POST", "/master/tasks/kill", {"ids": [ids[0], ids[1]]})
    assert answer == {"killed": 1}  # the first had ended already
    status, answer = await env.call("POST", "/master/tasks/kill", {"state": ["FINISHED"]})
    assert answer == {"killed": 0}
    assert env.rows() == dict.fromkeys(ids, "KILLED")
    v = await env.vars()
    assert (v["tasks_pending"], v["tasks_killed"]) == ("0", "3")


async def test_bulk_kill_sends_kills_for_tasks_on_live_slaves(env: Env) -> None:
    slave = FakeSlave(env.db)
    libproc.spawn(slave)
    await register(env.master, slave, cpus=1, mem=1024)
    ids = await env.submit("run-1", "run-2", "wait-1")  # 0.1 cpus each: all placed
    await until(lambda: all(env.master.tasks[t].state == "STAGING" for t in ids))
    status, answer = await env.call("POST", "/master/tasks/kill", {"name": "run-"})
    assert (status, answer) == (200, {"killed": 2})
    await until(lambda: len(slave.of(pb.KillTaskMessage)) == 2)
    assert {m.task_id.value for m in slave.of(pb.KillTaskMessage)} == set(ids[:2])
    assert env.master.tasks[ids[2]].state == "STAGING"  # not named: untouched


@pytest.mark.parametrize("body", [b"{}", b"[]", b'{"ids": []}', b'{"ids": [true]}',
                                  b'{"state": ["BOGUS"]}', b'{"ids": ["1"], "name": "x"}',
                                  b'{"state": "PENDING", "extra": 1}', b"not json",
                                  b'{"name": 7}', b'{"state": []}',
                                  json.dumps({"ids": [str(i) for i in range(10_001)]}).encode()],
                         ids=lambda b: repr(b[:30]))
async def test_a_bad_bulk_kill_is_a_400_and_kills_nothing(env: Env, body: bytes) -> None:
    ids = await env.submit("x")
    status, answer = await env.call("POST", "/master/tasks/kill", body)
    assert status in (400, 413) and isinstance(answer["error"], str), answer
    assert env.rows() == {ids[0]: "PENDING"}


async def test_a_bulk_kill_the_database_refuses_is_503_and_changes_nothing(env: Env) -> None:
    ids = await env.submit("p-1", "p-2")
    os.chmod(env.db, 0o444)
    try:
        status, answer = await env.call("POST", "/master/tasks/kill", {"state": ["PENDING"]})
        assert status == 503 and "as they were" in answer["error"]
        assert [r.id for r in env.master._index.pending(env.master.tasks)] == ids
        assert (await env.vars())["tasks_pending"] == "2"
    finally:
        os.chmod(env.db, 0o644)
    await until(lambda: env.store.fault() is None)
    assert env.rows() == dict.fromkeys(ids, "PENDING")
    assert (await env.call("POST", "/master/tasks/kill", {"state": ["PENDING"]}))[1] == {
        "killed": 2}


async def test_bulk_kill_needs_the_secret(tmp_path: Path) -> None:
    async for env in _start(tmp_path / "m.db", MasterConfig(secret="s3cret")):
        status, answer = await env.call("POST", "/master/tasks/kill", {"state": ["PENDING"]})
        assert status == 401
        status, answer = await env.call("POST", "/master/tasks/kill", {"state": ["PENDING"]},
                                        {"Authorization": "Bearer s3cret"})
        assert (status, answer) == (200, {"killed": 0})


# -- retention ---------------------------------------------------------------------------


async def test_retention_deletes_tasks_ended_before_it_in_the_background(
        tmp_path: Path) -> None:
    config = MasterConfig(task_retention=100.0, gc_interval=10.0, max_completed_tasks=2)
    async for env in _start(tmp_path / "m.db", config):
        old = await env.submit("old-1", "old-2", "old-3")
        await env.call("POST", "/master/tasks/kill", {"ids": old})
        Clock.advance(60)
        young = await env.submit("young-1")
        await env.call("POST", "/master/tasks/kill", {"ids": young})
        waiting = await env.submit("waiting")
        await env.heartbeat()
        await until(lambda e=env: e.master.gc.passes >= 1)
        assert set(env.rows()) == set(old + young + waiting)  # nothing old enough yet
        Clock.advance(50)  # the old ones ended 111 s ago, the young one 51 s ago
        await env.heartbeat()
        await until(lambda e=env: e.master.gc.passes >= 2)
        assert env.rows() == {young[0]: "KILLED", waiting[0]: "PENDING"}
        v = await env.vars()
        assert (v["gc_tasks_deleted"], v["tasks_killed"], v["tasks_total"]) == ("3", "1", "2")
        assert v["gc_task_retention_secs"] == "100" and old[0] not in env.master.tasks
        status, answer = await env.call("GET", f"/master/tasks/{old[0]}")
        assert status == 404


async def test_a_retention_pass_the_database_refuses_deletes_nothing_and_the_next_does(
        tmp_path: Path) -> None:
    config = MasterConfig(task_retention=10.0, gc_interval=5.0)
    async for env in _start(tmp_path / "m.db", config):
        ids = await env.submit("a", "b")
        await env.call("POST", "/master/tasks/kill", {"ids": ids})
        await until(lambda e=env: e.master.memory.positions_settled)
        Clock.advance(20)
        os.chmod(env.db, 0o444)
        try:
            await env.heartbeat()
            await until(lambda e=env: e.master.gc.passes >= 1)
            assert env.master.gc.failures == 1 and env.rows() == dict.fromkeys(ids, "KILLED")
            assert (await env.vars())["tasks_total"] == "2"
        finally:
            os.chmod(env.db, 0o644)
        await until(lambda e=env: e.store.fault() is None)
        Clock.advance(5)
        await env.heartbeat()
        await until(lambda e=env: e.master.gc.passes >= 2)
        assert env.rows() == {} and (await env.vars())["tasks_total"] == "0"


async def test_no_retention_keeps_every_task(env: Env) -> None:
    ids = await env.submit("a")
    await env.call("POST", "/master/tasks/kill", {"ids": ids})
    Clock.advance(10 * 365 * 86400)
    await env.heartbeat()
    assert env.master.gc.passes == 0 and env.rows() == {ids[0]: "KILLED"}
    assert (await env.vars())["gc_task_retention_secs"] == "-1"


# -- /metrics ----------------------------------------------------------------------------


async def test_metrics_are_prometheus_text_with_tasks_slaves_and_latencies(env: Env) -> None:
    slave = FakeSlave(env.db)
    libproc.spawn(slave)
    await register(env.master, slave, cpus=2, mem=512)
    [tid] = await env.submit("m")
    await until(lambda: bool(slave.of(pb.LaunchTasksMessage)))
    slave.update(env.master.pid, tid, pb.FINISHED, exit_code=0)
    await until(lambda: bool(slave.of(pb.StatusUpdateAcknowledgementMessage)))
    [left] = await env.submit("left")
    await until(lambda: len(slave.of(pb.LaunchTasksMessage)) == 2)
    async with env.http.get(env.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("master_tasks", (("state", "finished"),))] == 1
    assert samples[("master_tasks", (("state", "staging"),))] == 1
    assert samples[("master_tasks", (("state", "pending"),))] == 0
    assert samples[("master_tasks_in_memory", ())] == 2
    assert samples[("master_slaves", (("state", "active"),))] == 1
    assert samples[("master_cpus", ())] == 2
    assert samples[("master_cpus_used", ())] == pytest.approx(0.1)
    assert samples[("master_mem_bytes", ())] == 512 * 2**20
    assert samples[("master_task_launches_total", ())] == 2
    assert samples[("master_task_endings_total", (("state", "finished"),))] == 1
    assert samples[("master_status_update_seconds_count", ())] == 1
    assert samples[("master_store_batch_seconds_count", ())] >= 2
    assert samples[("master_status_updates_total", ())] == 1
    assert samples[("libproc_messages_local_total", ())] >= 1  # the slave is in this process
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines()
              if line and not line.startswith("#")]
    assert len(series) == len(set(series)), "a series twice"  # merged with libproc's
