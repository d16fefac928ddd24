"""The master's attempts, usage and retry backoff: a real master in this OS process with a
real SQLite file and libproc peers as slaves; the backoff runs on the paused Clock."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import libproc
from libproc import UPID, Clock
from master.process import Master, MasterConfig
from master.store import Store
from protos import cluster_pb2 as pb
from test_master_actor import FakeSlave, register, submit
from test_master_hostile_http import Env, _start
from waiting import until


class LogSlave(FakeSlave):
    """A fake slave that also serves /logs, answering which slave and attempt was asked."""

    def initialize(self) -> None:
        super().initialize()
        self.route("/logs", self._logs)

    def _logs(self, request: web.BaseRequest) -> web.Response:
        q = request.query
        return web.Response(body=f"{self.id} task {q['task_id']} attempt {q['attempt']}\n"
                            .encode(), headers={"X-Log-Offset": "0", "X-Log-Eof": "1"})

    def end(self, master: UPID, tid: str, attempt: int, state: int = pb.FAILED,
            code: int | None = 1, usage: pb.ResourceUsage | None = None) -> None:
        u = pb.StatusUpdate(task_id=pb.TaskID(value=tid), state=state, uuid=uuid.uuid4().bytes,
                            attempt=attempt, slave_id=pb.SlaveID(value=self.slave_id),
                            message=f"exited with code {code}")
        if code is not None:
            u.exit_code = code
        if usage is not None:
            u.usage.CopyFrom(usage)
        self.signed(master, pb.StatusUpdateMessage(update=u))

    def progress(self, master: UPID, tid: str, attempt: int, usage: pb.ResourceUsage) -> None:
        self.signed(master, pb.ReportProgressMessage(
            slave_id=pb.SlaveID(value=self.slave_id),
            tasks=[pb.Task(name=tid, task_id=pb.TaskID(value=tid), progress=0.5,
                           state=pb.RUNNING, attempt=attempt, usage=usage)]))

    def launched(self) -> list[tuple[str, int]]:
        return [(t.task_id.value, t.attempt) for m in self.of(pb.LaunchTasksMessage)
                for t in m.tasks]


def usage(cpu: float, mem: float, peak: float | None = None) -> pb.ResourceUsage:
    return pb.ResourceUsage(cpu_seconds=cpu, mem_mib=mem, mem_peak_mib=peak or mem,
                            source="cgroups v2", timestamp=1.7e9)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _start(tmp_path):
        yield e


async def slave_up(master: Master, cpus: float = 2) -> LogSlave:
    slave = LogSlave()
    libproc.spawn(slave)
    await register(master, slave, cpus=cpus)
    return slave


async def run_once(env: Env, slave: LogSlave, tid: str, attempt: int, code: int = 1,
                   **kw: Any) -> None:
    """Wait for `attempt`'s launch on `slave`, run it and end it."""
    await until(lambda: (tid, attempt) in slave.launched())
    slave.update(env.master.pid, tid, pb.RUNNING, attempt=attempt)
    await until(lambda: env.master.tasks[tid].state == "RUNNING")
    slave.end(env.master.pid, tid, attempt, code=code, **kw)
    rec = env.master.tasks[tid]
    await until(lambda: rec.attempts > attempt or rec.state != "RUNNING")


async def detail(env: Env, tid: str) -> dict[str, Any]:
    async with env.http.get(f"{env.base}/master/tasks/{tid}") as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
    assert b"NaN" not in raw and b"Infinity" not in raw
    data: dict[str, Any] = json.loads(raw)
    return data


async def test_retries_wait_for_a_doubling_backoff_on_the_clock(env: Env) -> None:
    master = env.master
    slave = await slave_up(master)
    [tid] = await submit(master, {"command": "exit 1", "retries": 2, "retry_delay": 1})
    await run_once(env, slave, tid, 1, usage=usage(0.5, 3.0, 4.0))
    rec = master.tasks[tid]
    assert rec.state == "PENDING"
    ended = Clock.now()
    shown = await detail(env, tid)
    assert shown["retry_at"] == pytest.approx(ended + 1.0)
    assert shown["pending_reason"].startswith("retry backoff: attempt 2 of 3 starts in 1.0s")
    assert [a["state"] for a in shown["attempts"]] == ["FAILED"]
    Clock.advance(0.9)
    await Clock.settle()
    await until(lambda: master.store.stats()["queue_length"] == 0)
    assert slave.launched() == [(tid, 1)] and rec.state == "PENDING"  # still waiting
    Clock.advance(0.2)
    await run_once(env, slave, tid, 2, code=2)
    Clock.advance(1.9)  # the second wait is twice the first
    await Clock.settle()
    await until(lambda: master.store.stats()["queue_length"] == 0)
    assert slave.launched() == [(tid, 1), (tid, 2)]
    Clock.advance(0.2)
    await run_once(env, slave, tid, 3, code=3)
    assert rec.state == "FAILED" and rec.exit_code == 3  # no retry left
    shown = await detail(env, tid)
    attempts = shown["attempts"]
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in attempts] == [
        (1, "FAILED", 1), (2, "FAILED", 2), (3, "FAILED", 3)]
    assert attempts[0]["usage"] == {"cpu_seconds": 0.5, "mem_mib": 3.0, "mem_peak_mib": 4.0,
                                    "source": "cgroups v2", "timestamp": 1.7e9}
    gaps = [attempts[i + 1]["launched_at"] - attempts[i]["finished_at"] for i in range(2)]
    assert 1.0 <= gaps[0] < 1.2 and 2.0 <= gaps[1] < 2.2, gaps
    assert shown["attempt"] == 3 and shown["retry_at"] is None and shown["usage"] is None


async def test_a_retry_prefers_another_slave_than_the_one_it_failed_on(env: Env) -> None:
    master = env.master
    big = await slave_up(master, cpus=4)
    small = await slave_up(master, cpus=2)
    [tid] = await submit(master, {"command": "exit 1", "retries": 2, "retry_delay": 0})
    await run_once(env, big, tid, 1)  # spread: the slave with most free cpus first
    await run_once(env, small, tid, 2)  # not back on `big`, though it has more room
    await run_once(env, big, tid, 3)
    shown = await detail(env, tid)
    assert [a["slave_id"] for a in shown["attempts"]] == [big.slave_id, small.slave_id,
                                                          big.slave_id]


async def test_usage_is_sampled_while_running_and_final_at_the_end(env: Env) -> None:
    master = env.master
    slave = await slave_up(master)
    [tid] = await submit(master, {"command": "sleep 5"})
    await until(lambda: (tid, 1) in slave.launched())
    slave.update(master.pid, tid, pb.RUNNING, attempt=1)
    slave.progress(master.pid, tid, 1, usage(1.25, 20.0, 22.0))
    await until(lambda: master.tasks[tid].progress == 0.5)
    shown = await detail(env, tid)
    assert shown["state"] == "RUNNING"
    assert shown["usage"]["cpu_seconds"] == 1.25 and shown["usage"]["mem_mib"] == 20.0
    assert shown["attempts"][0]["usage"] == shown["usage"]
    # Untrusted: NaN, negative or absurd figures are dropped and counted; the last good stays.
    for bad in (usage(math.nan, 1.0), usage(-1.0, 1.0), usage(1.0, 1e300),
                pb.ResourceUsage(mem_mib=1.0), usage(1.0, math.inf)):
        slave.progress(master.pid, tid, 1, bad)
    await until(lambda: master._counters["usage_refused"] == 5)
    assert (await detail(env, tid))["usage"]["cpu_seconds"] == 1.25
    slave.progress(master.pid, tid, 7, usage(99.0, 99.0))  # a stale attempt: ignored
    slave.end(master.pid, tid, 1, state=pb.FINISHED, code=0, usage=usage(2.5, 0.0, 30.0))
    await until(lambda: master.tasks[tid].state == "FINISHED")
    shown = await detail(env, tid)
    assert (shown["usage"]["cpu_seconds"], shown["usage"]["mem_peak_mib"]) == (2.5, 30.0)
    async with env.http.get(f"{env.base}/master/vars") as resp:
        assert "usage_refused 5" in await resp.text()


async def test_logs_of_each_attempt_come_from_the_slave_it_ran_on(env: Env) -> None:
    master = env.master
    a = await slave_up(master, cpus=4)
    b = await slave_up(master, cpus=2)
    [tid] = await submit(master, {"command": "exit 1", "retries": 1, "retry_delay": 0})
    await run_once(env, a, tid, 1)
    await run_once(env, b, tid, 2)

    async def logs(query: str) -> tuple[int, bytes]:
        async with env.http.get(f"{env.base}/master/tasks/{tid}/logs?{query}") as resp:
            return resp.status, await resp.read()

    assert await logs("attempt=1") == (200, f"{a.id} task {tid} attempt 1\n".encode())
    assert await logs("") == (200, f"{b.id} task {tid} attempt 2\n".encode())  # the latest
    assert await logs("attempt=2&stream=stderr") == (200, f"{b.id} task {tid} attempt 2\n"
                                                     .encode())
    status, body = await logs("attempt=3")
    assert status == 404 and "has had 2 attempt(s); there is no attempt 3" in json.loads(
        body)["error"]
    for bad in ("attempt=0", "attempt=x", "attempt=-1", "attempt=" + "9" * 40):
        status, body = await logs(bad)
        assert status == 400 and "'attempt'" in json.loads(body)["error"], bad
    [_, pending] = await submit(master, {"command": "sleep 9", "cpus": 4},
                                {"command": "true", "cpus": 4})  # waits for the first
    async with env.http.get(f"{env.base}/master/tasks/{pending}/logs") as resp:
        assert resp.status == 404 and "not been launched" in (await resp.json())["error"]


async def test_attempts_and_a_waiting_retry_survive_a_master_restart(tmp_path: Path) -> None:
    gen = _start(tmp_path)
    env = await gen.__anext__()
    try:
        master = env.master
        slave = await slave_up(master)
        [done, waiting] = await submit(
            master, {"command": "exit 1", "retries": 1, "retry_delay": 0},
            {"command": "exit 1", "retries": 1, "retry_delay": 30})
        await run_once(env, slave, done, 1)
        await run_once(env, slave, done, 2, code=4)
        await run_once(env, slave, waiting, 1, code=5, usage=usage(0.75, 8.0))
        before = await detail(env, waiting)
        assert before["retry_at"] is not None
        history = (await detail(env, done))["attempts"]
        libproc.terminate(master.pid)
        await libproc.wait(master.pid)
        await env.store.close()
        Clock.advance(10.0)

        store = Store.open(str(env.db))
        again = Master(store, MasterConfig())
        libproc.spawn(again)
        try:
            env.master, env.store = again, store
            assert (await detail(env, done))["attempts"] == history  # read from the database
            after = await detail(env, waiting)
            assert after["state"] == "PENDING" and after["retry_at"] == before["retry_at"]
            assert after["attempts"][0]["exit_code"] == 5
            assert after["attempts"][0]["usage"]["cpu_seconds"] == 0.75
            assert again.attempts.held(waiting)  # not launched before its time
            Clock.advance(21.0)
            await Clock.settle()
            assert not again.attempts.held(waiting)
        finally:
            libproc.terminate(again.pid)
            await libproc.wait(again.pid)
            await store.close()
    finally:
        await gen.aclose()
