"""Several real masters (`cluster master --zk … --db postgresql+psycopg://…`): the election,
standbys redirecting to the leader, what a standby tells slaves, and fencing by the database
stepping a master down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from ha_cluster import HaCluster, no_redirects
from kazoo.client import KazooClient

import libproc
from cli.client import MasterClient as CliClient
from cluster_harness import REPO, wait_for
from libproc import UPID, ProtobufProcess
from protos import cluster_pb2 as pb
from protos.leader_info import LeaderInfo, members


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def test_three_masters_one_leads_and_the_standbys_redirect_to_it(ha: HaCluster) -> None:
    masters = [ha.start_master() for _ in range(3)]
    leader = ha.leader()
    standbys = [m for m in masters if m is not leader]
    state = ha.state(leader)
    assert state is not None and state["role"] == "leader" and state["term"]["epoch"] == 1

    # ZooKeeper agrees: the lowest member is the leader's, and holds its address.
    path = ha.zk_url.split("/", 3)[3]
    zk = KazooClient(hosts=ha.zk_url[5:].split("/", 1)[0], timeout=10.0)
    zk.start(timeout=30)
    try:
        ordered = members(zk.get_children(f"/{path}"))
        assert len(ordered) == 3
        info = LeaderInfo.decode(zk.get(f"/{path}/{ordered[0]}")[0])
    finally:
        zk.stop()
    assert info.pid == state["pid"] == f"master@127.0.0.1:{leader.port}"
    assert info.http == f"http://127.0.0.1:{leader.port}"
    # ... and so does the database: one claim, by the leader.
    epoch, owner, _ = ha.leadership()
    assert epoch == 1 and owner.startswith(info.pid)

    standby = standbys[0]
    own = ha.state(standby)
    assert own is not None and own["role"] == "standby" and own["leading"] is False
    assert own["leader"]["pid"] == info.pid and own["pid"] == f"master@127.0.0.1:{standby.port}"
    for method, path_qs in [("GET", "/master/tasks?state=RUNNING&limit=5"),
                            ("GET", "/vars"), ("GET", "/master/slaves"), ("GET", "/"),
                            ("POST", "/master/tasks"), ("POST", "/master/tasks/1/kill")]:
        raw = no_redirects(standby.port, method, path_qs,
                           {"command": "true"} if method == "POST" else None)
        assert raw.status == 307, (method, path_qs, raw)
        assert raw.headers["Location"] == f"http://127.0.0.1:{leader.port}{path_qs}"
        assert raw.json()["leader"]["pid"] == info.pid
    health = no_redirects(standby.port, "GET", "/health")
    assert health.status == 200 and health.json()["healthy"] is True
    # Each master's own metrics, standbys' too: which one is elected (Mesos's master/elected).
    elected = {m.port: no_redirects(m.port, "GET", "/metrics/snapshot").json()["master/elected"]
               for m in masters}
    assert elected == {m.port: (1.0 if m is leader else 0.0) for m in masters}
    assert "version" in ha.api(leader).vars()  # the leader serves itself

    # A client given a standby follows it to the leader, a POST included (same body).
    client = CliClient(f"127.0.0.1:{standby.port}")
    (tid,) = client.submit([{"command": "true", "name": "via-standby"}])
    assert ha.api(leader).task(tid)["name"] == "via-standby"
    # ... and so does the CLI given ZooKeeper.
    listed = _cli("tasks", "--json", "--master", ha.zk_url)
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["tasks"]] == ["via-standby"]
    bad = _cli("tasks", "--master", "zk://127.0.0.1:1/")
    assert bad.returncode != 0 and "bad ZooKeeper URL" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_a_standby_tells_slave_messages_it_does_not_lead_at_most_once_a_second(
        ha: HaCluster, runtime: UPID) -> None:
    ha.start_master()
    leader = ha.leader()
    standby = await asyncio.to_thread(ha.start_master)
    await asyncio.to_thread(ha.leader)
    hints: list[tuple[UPID, pb.NotLeaderMessage]] = []

    class FakeSlave(ProtobufProcess):
        def initialize(self) -> None:
            self.install(pb.NotLeaderMessage, lambda sender, msg: hints.append((sender, msg)))

    fake = FakeSlave("slave(1)")
    libproc.spawn(fake)
    target = UPID("master", "127.0.0.1", standby.port)
    for _ in range(50):
        fake.send(target, pb.RegisterSlaveMessage(resources=pb.Resources(cpus=1, mem=64),
                                                  nonce=os.urandom(16)))
    deadline = asyncio.get_running_loop().time() + 10
    while not hints and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the other 49, had they been answered, would be here now
    assert len(hints) == 1, hints
    sender, msg = hints[0]
    assert sender == target and msg.leader == f"master@127.0.0.1:{leader.port}"
    state = await asyncio.to_thread(ha.state, standby)
    assert state is not None and state["role"] == "standby"  # and no slave was registered
    slaves = await asyncio.to_thread(lambda: ha.api(leader).slaves())
    assert slaves == []


def test_a_master_fenced_by_the_database_steps_down_and_leads_again_in_a_new_term(
        ha: HaCluster) -> None:
    """Another claim of the epoch (as by a master that believes it leads) fences the leader
    even though ZooKeeper still names it: its write fails, stores nothing, and it steps down,
    withdraws, contends again and, alone, leads a new term with a newer epoch."""
    master = ha.start_master()
    assert ha.leader() is master
    api = ha.api(master)
    (kept,) = api.submit({"command": "true", "name": "before"})
    ha.sql("UPDATE leadership SET epoch = epoch + 1, owner = 'intruder' WHERE id = 1")
    raw = no_redirects(master.port, "POST", "/master/tasks", {"command": "true", "name": "x"})
    assert raw.status == 503, raw
    assert "intruder" in raw.json()["error"] and "none was created" in raw.json()["error"]
    assert ha.sql("SELECT count(*) FROM tasks WHERE name = 'x'") == [(0,)]

    def new_term() -> dict[str, object] | None:
        state = ha.state(master)
        return state if state and state.get("leading") and state["term"]["number"] == 2 \
            else None

    state = wait_for(new_term, 30.0, what="the master leading again, in term 2",
                     show=lambda: ha.state(master))
    assert state["ha_withdrawals"] == 1 and state["ha_step_downs"] == 1  # type: ignore[index]
    last = state["last_term"]
    assert last["number"] == 1 and last["epoch"] == 1  # type: ignore[index]
    assert "fenced" in last["ended"] and last["writes_fenced"] >= 1  # type: ignore[index]
    epoch, owner, _ = ha.leadership()
    assert epoch == 3 and owner.startswith(f"master@127.0.0.1:{master.port} term 2")
    (tid,) = api.submit({"command": "true", "name": "after"})
    names = {t["name"] for t in api.tasks()}
    assert names == {"before", "after"} and kept != tid
