"""The cluster of several masters when PostgreSQL or ZooKeeper goes away: reported clearly
(`/health`, 503 on writes), nothing acknowledged lost, and back to work by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ha_cluster import FAILOVER, HaCluster, no_redirects

from cli.client import ClusterError
from cli.client import MasterClient as CliClient
from cluster_harness import Cluster, wait_for
from ha_servers import PostgresServer, ZooKeeperServer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.close()
        print(c.logs())


class Trickle(threading.Thread):
    """One task every `every` seconds through the CLI's client (following ZooKeeper), until
    stopped: the 201s (ids) and the refusals (messages)."""

    def __init__(self, zk_url: str, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.client = CliClient(zk_url, timeout=15.0, follow_wait=5.0)
        self.every = every
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.acked += self.client.submit([{"command": "true", "cpus": 0.1, "mem": 16}])
            except ClusterError as exc:
                self.refused.append(str(exc))


def test_postgres_killed_and_restarted_under_load(
        cluster: Cluster, zk_url: str, own_postgres: PostgresServer) -> None:
    ha = HaCluster(cluster, zk_url, own_postgres.create_database("outage"))
    leader = ha.start_master()
    assert ha.leader() is leader
    ha.start_master()
    ha.leader()
    ha.start_slave(cpus=4.0, mem=4096.0)
    ha.wait_slaves(leader, 1)
    trickle = Trickle(ha.zk_url)
    trickle.start()
    try:
        wait_for(lambda: len(trickle.acked) >= 20, 60.0, what="20 tasks accepted")
        own_postgres.kill()

        def unhealthy() -> str | None:
            raw = no_redirects(leader.port, "GET", "/health")
            return raw.json().get("reason") if raw.status == 503 else None

        reason = wait_for(unhealthy, 30.0, what="the leader's /health to report the database")
        assert "database" in reason and "master.store" in reason, reason
        refused = no_redirects(leader.port, "POST", "/master/tasks", {"command": "true"})
        assert refused.status == 503 and "none was created" in refused.json()["error"]
        outage_acked = len(trickle.acked)
        time.sleep(1.0)
        own_postgres.start()
        wait_for(lambda: len(trickle.acked) >= outage_acked + 20, 60.0,
                 what="20 more tasks accepted once PostgreSQL is back")
    finally:
        trickle.stop.set()
        trickle.join(30.0)
    assert trickle.refused, "no write was refused while PostgreSQL was down"
    assert all("database" in why or "persist" in why for why in trickle.refused), \
        trickle.refused[:3]
    wait_for(lambda: no_redirects(leader.port, "GET", "/health").status == 200, 30.0,
             what="the leader healthy again")
    assert ha.leader() is leader  # the database's outage is no reason to fail over
    ended = ha.api(leader).wait_terminal(trickle.acked, timeout=120.0)
    assert {t["state"] for t in ended.values()} == {"FINISHED"}
    # The API shows a task's state as soon as the master knows it; its row is committed by
    # the store's writer a moment later (and the slave acknowledged only then): wait for it.

    def not_yet_stored() -> list[tuple[str, object]] | None:
        rows = dict(ha.sql("SELECT id, state FROM tasks"))
        missing = [(tid, rows.get(tid)) for tid in trickle.acked if rows.get(tid) != "FINISHED"]
        return missing or None

    wait_for(lambda: not_yet_stored() is None, 30.0, what="every acknowledged task's row FINISHED",
             show=not_yet_stored)
    assert ha.leadership()[0] == 1  # the same term throughout


def test_zookeeper_lost_then_back_a_leader_takes_over_and_keeps_the_running_task(
        cluster: Cluster, own_zookeeper: ZooKeeperServer, pg_url: str) -> None:
    ha = HaCluster(cluster, own_zookeeper.url("/outage"), pg_url)
    masters = [ha.start_master(), ha.start_master()]
    leader = ha.leader()
    ha.start_slave(cpus=2.0, mem=2048.0)
    ha.wait_slaves(leader, 1)
    api = ha.api(leader)
    tid = api.submit_one("for i in $(seq 40); do echo PROGRESS $((i*2)); sleep 0.25; done")
    api.wait_state(tid, "RUNNING", timeout=30.0)
    own_zookeeper.stop()

    def reported() -> bool:
        for m in masters:
            raw = no_redirects(m.port, "GET", "/health")
            if raw.status != 503 or "ZooKeeper" not in raw.json().get("reason", ""):
                return False
        return True

    wait_for(reported, 30.0, what="every master's /health to report ZooKeeper")
    # Without ZooKeeper nobody may lead: a write is refused wherever it goes (a standby may
    # still name the last leader, which refuses it), and nothing is done.
    accepted: list[str] = []  # while the leader's lease still held, it could accept

    def refused(port: int) -> bool:
        raw = no_redirects(port, "POST", "/master/tasks", {"command": "true"})
        if raw.status == 307:
            raw = no_redirects(int(raw.headers["Location"].split(":")[2].split("/")[0]),
                               "POST", "/master/tasks", {"command": "true"})
        if raw.status == 201:
            accepted.extend(raw.json()["ids"])
        return raw.status == 503 and raw.headers.get("Retry-After") == "1"

    wait_for(lambda: all(refused(m.port) for m in masters), 30.0,
             what="every master refusing writes")
    own_zookeeper.start()
    leader = ha.leader(timeout=FAILOVER + 10)
    assert ha.leadership()[0] == 2  # a new term, whoever leads it
    ha.wait_slaves(leader, 1)
    api = ha.api(leader)
    task = api.wait_state(tid, "FINISHED", timeout=60.0)
    assert task["attempt"] == 1  # it ran on through the outage, never again
    after = api.submit_one("true")
    api.wait_state(after, "FINISHED", timeout=30.0)
    # The refused writes left nothing; the accepted ones are all there.
    assert [t["id"] for t in api.tasks()] == [tid, *accepted, after]
    for m in masters:
        assert no_redirects(m.port, "GET", "/health").status == 200
