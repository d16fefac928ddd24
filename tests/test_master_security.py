"""The master counts only what a registered slave signed with its current session.

A real master (real SQLite file) and a victim slave speaking the protocol run in this
process; forged messages come over raw sockets from 127.0.0.2, claiming to be the victim
(whose UPID and id `/master/slaves` publishes). Each test checks that nothing changed, and
that the victim is still served afterwards. Timers run on the paused Clock.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import libproc
from libproc import UPID, Clock
from libproc.metrics import metrics
from master.api import ApiError, parse_submit
from master.process import Master, MasterConfig
from master.store import Store
from protos import auth
from protos import cluster_pb2 as pb
from signed_peers import ATTACKER, SignedSlave, forge
from waiting import until


class Victim(SignedSlave):
    def update(self, master: UPID, task_id: str, state: int, attempt: int = 1) -> bytes:
        u = pb.StatusUpdate(task_id=pb.TaskID(value=task_id), state=state,
                            uuid=uuid.uuid4().bytes, attempt=attempt,
                            slave_id=pb.SlaveID(value=self.slave_id))
        self.signed(master, pb.StatusUpdateMessage(update=u))
        return u.uuid


class Setup:
    def __init__(self, master: Master, victim: Victim, db: Path) -> None:
        self.master, self.victim, self.db = master, victim, db

    async def submit(self, *items: dict[str, Any]) -> list[str]:
        records = await self.master.submit(parse_submit(list(items)))
        return [r.id for r in records]

    async def running_task(self) -> str:
        [tid] = await self.submit({"command": "sleep 100", "cpus": 1})
        await until(lambda: self.master.tasks[tid].state == "STAGING")
        self.victim.update(self.master.pid, tid, pb.RUNNING)
        await until(lambda: self.master.tasks[tid].state == "RUNNING")
        return tid

    def refused(self) -> int:
        return self.master._counters["messages_refused"]

    async def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.master.pid.port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return json.loads(text, parse_constant=_no_constants)
            return text


def _no_constants(name: str) -> Any:
    raise AssertionError(f"the master answered invalid JSON: {name}")


async def register(master: Master, slave: SignedSlave, cpus: float = 2) -> None:
    slave.register(master.pid, cpus=cpus)
    await until(lambda: slave.slave_id in master.slaves)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    db = tmp_path / "master.db"
    store = Store.open(f"sqlite:///{db}")
    master = Master(store, MasterConfig(slave_timeout=5.0, slave_retention=60.0,
                                        max_slaves=5))
    libproc.spawn(master)
    victim = Victim()
    libproc.spawn(victim)
    try:
        await register(master, victim)
        yield Setup(master, victim, db)
    finally:
        await libproc.stop()
        await store.close()
        Clock.reset()


def status(task_id: str, state: int, slave_id: str, attempt: int = 1) -> pb.StatusUpdateMessage:
    return pb.StatusUpdateMessage(update=pb.StatusUpdate(
        task_id=pb.TaskID(value=task_id), state=state, uuid=uuid.uuid4().bytes,
        attempt=attempt, slave_id=pb.SlaveID(value=slave_id), exit_code=0))


async def test_forged_status_updates_change_no_task(setup: Setup) -> None:
    master, victim = setup.master, setup.victim
    tid = await setup.running_task()
    [queued] = await setup.submit({"command": "x", "cpus": 2})  # waits: victim is busy
    assert master.tasks[queued].state == "PENDING"
    # Unsigned, and signed with a guessed key, claiming to be the victim.
    await forge(master.pid, status(tid, pb.FINISHED, victim.slave_id), victim.pid)
    await forge(master.pid, status(queued, pb.KILLED, victim.slave_id, attempt=0), victim.pid)
    guessed = status(tid, pb.FINISHED, victim.slave_id)
    auth.Session(auth.new_key(), auth.SLAVE_TO_MASTER).seal(guessed)
    await forge(master.pid, guessed, victim.pid)
    await until(lambda: setup.refused() == 3)
    # A slave the attacker registered itself (allowed without a secret) signs correctly,
    # but does not hold these tasks.
    mallory = SignedSlave()
    libproc.spawn(mallory)
    await register(master, mallory, cpus=0.5)  # too small for the queued task
    mallory.signed(master.pid, status(tid, pb.FINISHED, mallory.slave_id))
    mallory.signed(master.pid, status(queued, pb.KILLED, mallory.slave_id, attempt=0))
    await until(lambda: len(mallory.of(pb.StatusUpdateAcknowledgementMessage)) == 2)
    assert master.tasks[tid].state == "RUNNING"
    assert master.tasks[queued].state == "PENDING"
    # The victim is still believed.
    victim.update(master.pid, tid, pb.FINISHED)
    await until(lambda: master.tasks[tid].state == "FINISHED")


async def test_a_captured_update_cannot_be_replayed(setup: Setup) -> None:
    master, victim = setup.master, setup.victim
    tid = await setup.running_task()
    msg = status(tid, pb.FAILED, victim.slave_id)
    assert victim.session is not None
    victim.session.seal(msg)
    body = msg.SerializeToString()
    await forge(master.pid, msg, victim.pid, body=body)
    await until(lambda: master.tasks[tid].state == "FAILED")
    await forge(master.pid, msg, victim.pid, body=body, copies=3)
    await until(lambda: setup.refused() == 3)


async def test_forged_unregister_does_not_remove_the_slave(setup: Setup) -> None:
    master, victim = setup.master, setup.victim
    tid = await setup.running_task()
    statuses = await forge(master.pid, pb.UnregisterSlaveMessage(
        slave_id=pb.SlaveID(value=victim.slave_id)), victim.pid, copies=10)
    assert statuses == [b"HTTP/1.1 202 Accepted"] * 10
    await until(lambda: setup.refused() == 10)
    assert master.slaves[victim.slave_id].state == "active"
    assert master.tasks[tid].state == "RUNNING"


async def test_forged_registration_from_the_victims_upid_changes_nothing(setup: Setup) -> None:
    master, victim = setup.master, setup.victim
    before = {k: v.to_json() for k, v in master.slaves.items()}
    await forge(master.pid, pb.RegisterSlaveMessage(
        resources=pb.Resources(cpus=64, mem=1 << 20), nonce=auth.new_nonce()), victim.pid)
    # The answer went to the victim, who did not ask: it refuses it.
    await until(lambda: any(isinstance(m, pb.SlaveRegisteredMessage) for m in victim.forged))
    assert {k: v.to_json() for k, v in master.slaves.items()} == before
    listed = await setup.get("/master/slaves")
    assert [s["id"] for s in listed["slaves"]] == [victim.slave_id]
    # The unconfirmed registration offers nothing: a task only it could hold is refused,
    # and the next task goes to the victim.
    with pytest.raises(ApiError) as refused:
        await master.submit(parse_submit([{"command": "x", "cpus": 32}]))
    assert refused.value.status == 422
    [small] = await setup.submit({"command": "y", "cpus": 1})
    await until(lambda: master.tasks[small].state == "STAGING")
    assert master.tasks[small].slave_id == victim.slave_id


async def test_forged_and_replayed_reregistrations_are_refused(setup: Setup) -> None:
    master, victim = setup.master, setup.victim
    tid = await setup.running_task()
    info = pb.TaskInfo(name="", task_id=pb.TaskID(value=tid), command="", attempt=1)
    # Unsigned, claiming the victim has no tasks (which would make them LOST).
    await forge(master.pid, pb.ReregisterSlaveMessage(
        slave_id=pb.SlaveID(value=victim.slave_id), resources=pb.Resources(cpus=2, mem=1024),
        nonce=auth.new_nonce(), sequence=99), victim.pid)
    await until(lambda: master._counters["registrations_refused"] == 1)
    assert master.tasks[tid].state == "RUNNING"
    # An old re-registration without the task, then a newer one with it, both captured.
    assert victim.credential is not None

    def signed_rereg(seq: int, tasks: list[pb.RunningTask]) -> pb.ReregisterSlaveMessage:
        msg = pb.ReregisterSlaveMessage(
            slave_id=pb.SlaveID(value=victim.slave_id), resources=pb.Resources(cpus=2, mem=1024),
            tasks=tasks, nonce=auth.new_nonce(), sequence=seq)
        auth.seal(msg, victim.credential or b"", auth.SLAVE_TO_MASTER, seq)
        return msg

    old = signed_rereg(1, [])
    new = signed_rereg(2, [pb.RunningTask(task=info, state=pb.RUNNING)])
    victim.nonce = new.nonce
    await forge(master.pid, new, victim.pid)  # (as the victim would send it)
    await until(lambda: bool(victim.of(pb.SlaveReregisteredMessage)))
    await forge(master.pid, new, victim.pid)  # replayed
    await forge(master.pid, old, victim.pid)  # older, replayed late
    await until(lambda: master._counters["registrations_refused"] == 3)
    assert master.tasks[tid].state == "RUNNING"
    assert master.slaves[victim.slave_id].state == "active"


@pytest.mark.parametrize("cpus,mem", [(math.nan, 1024), (math.inf, 1024), (2, -1.0),
                                      (0, 1024), (2, math.inf), (1e300, 1024)])
async def test_registration_with_impossible_resources_is_refused(
        setup: Setup, cpus: float, mem: float) -> None:
    slave = SignedSlave()
    libproc.spawn(slave)
    slave.register(setup.master.pid, cpus=cpus, mem=mem)
    await until(lambda: bool(slave.of(pb.RegistrationRefusedMessage)))
    reason = slave.of(pb.RegistrationRefusedMessage)[0].reason
    assert "cpus" in reason or "mem" in reason
    assert not slave.slave_id
    state = await setup.get("/master/state")  # strict JSON: no NaN, no Infinity
    assert len(state["slaves"]) == 1


async def test_a_registration_flood_is_bounded(setup: Setup) -> None:
    master = setup.master
    nowhere = UPID("nobody", ATTACKER, 9)  # answers go to a closed port
    for i in range(4):
        await forge(master.pid, pb.RegisterSlaveMessage(
            resources=pb.Resources(cpus=8, mem=8192), nonce=auth.new_nonce()),
            UPID(f"fake({i})", ATTACKER, 9), copies=500)
    await until(lambda: master.registrar.slave_seq == 1 + 2000)  # every one was answered
    assert len(master.registrar.pending) <= 4  # one per claimed UPID
    assert list(master.slaves) == [setup.victim.slave_id]
    assert nowhere.id not in master.slaves
    for _ in range(12):
        Clock.advance(1.0)
        await Clock.settle()
    assert len(master.registrar.pending) == 0


async def test_lost_slaves_leave_the_table_and_the_table_is_bounded(setup: Setup) -> None:
    master = setup.master
    others = [SignedSlave() for _ in range(4)]
    for s in others:
        libproc.spawn(s)
        await register(master, s)
    assert len(master.slaves) == 5  # the bound
    extra = SignedSlave()
    libproc.spawn(extra)
    extra.register(master.pid)
    await until(lambda: bool(extra.of(pb.SlaveRegisteredMessage)))
    await until(lambda: master._counters["messages_refused"] >= 1)
    assert extra.slave_id not in master.slaves  # full of live slaves: refused
    for s in others:
        libproc.terminate(s.pid)  # silent from now on: lost after 5 s
    for _ in range(7):
        Clock.advance(1.0)
        await Clock.settle()
    assert sum(1 for s in master.slaves.values() if s.state == "lost") == 4
    late = SignedSlave()
    libproc.spawn(late)
    await register(master, late)  # a full table forgets its oldest lost slave
    assert len(master.slaves) == 5
    for _ in range(61):
        Clock.advance(1.0)
        await Clock.settle()
    assert set(master.slaves) == {setup.victim.slave_id, late.slave_id}
    assert master._counters["slaves_forgotten"] == 4


async def test_refusals_are_counted_and_logged_once_a_minute(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    master, victim = setup.master, setup.victim
    before = metrics.snapshot().get("master/messages_refused", 0)
    caplog.set_level(logging.WARNING, logger="master")
    await forge(master.pid, pb.PongSlaveMessage(slave_id=pb.SlaveID(value=victim.slave_id)),
                victim.pid, copies=100)
    await until(lambda: setup.refused() == 100)
    assert metrics.snapshot()["master/messages_refused"] == before + 100
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    Clock.advance(61.0)
    await forge(master.pid, pb.PongSlaveMessage(slave_id=pb.SlaveID(value=victim.slave_id)),
                victim.pid)
    await until(lambda: setup.refused() == 101)
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2
    assert "\nmessages_refused 101\n" in await setup.get("/master/vars")


async def test_credentials_are_never_published(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    victim = setup.victim
    await setup.running_task()
    assert victim.credential is not None and victim.session is not None
    secrets_hex = {victim.credential.hex(), victim.session.key.hex()}
    pages = [json.dumps(await setup.get(p)) for p in ("/master/slaves", "/master/state",
                                                      "/master/tasks")]
    pages.append(await setup.get("/master/vars"))
    for text in pages + [caplog.text]:
        assert not any(h in text for h in secrets_hex)
    slave_json = (await setup.get("/master/slaves"))["slaves"][0]
    assert set(slave_json) >= {"id", "pid", "state"}
    assert not {"credential", "session", "key", "token"} & set(slave_json)
