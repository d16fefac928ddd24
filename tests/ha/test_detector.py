"""Detecting the leading master against a real private ZooKeeper (protos/detector.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from zk_helpers import client, eventually, expire_session, info, lose, restore, sole_leader

from cluster_harness import free_port
from conftest import SESSION_TIMEOUT
from ha_servers import ZooKeeperServer
from master.election import LeaderContender
from protos.detector import Detected, DetectionError, LeaderDetector, find_leader
from protos.leader_info import LABEL

SOON = 10.0


@pytest.fixture
async def detector(zk_url: str) -> AsyncIterator[LeaderDetector]:
    made = LeaderDetector(zk_url, session_timeout=SESSION_TIMEOUT)
    made.start()
    try:
        yield made
    finally:
        await made.close()


async def _contenders(url: str, n: int) -> list[LeaderContender]:
    made = [LeaderContender(url, info(i), session_timeout=SESSION_TIMEOUT) for i in range(n)]
    for contender in made:
        contender.start()
    return made


async def test_detector_started_first_sees_the_first_master_then_follows_each_change(
        zk_url: str, detector: LeaderDetector) -> None:
    # Before any master: the path does not even exist.
    await eventually(lambda: "no znode" in detector.detected.error, SOON, "no znode yet",
                     lambda: detector.detected)
    seen: list[Detected] = []
    detector.on_change(seen.append)
    made = await _contenders(zk_url, 3)
    try:
        leader = await sole_leader(made, SOON)
        assert await detector.wait_for(lambda found: found is not None, SOON) == leader.info
        assert detector.detected.member == leader.member.rsplit("/", 1)[1]  # type: ignore[union-attr]
        for _ in range(2):  # each leader withdraws in turn: the detector follows
            await leader.close()
            made.remove(leader)
            leader = await sole_leader(made, SOON)
            expected = leader.info
            assert await detector.wait_for(lambda found, e=expected: found == e, SOON)
        await leader.close()
        await detector.wait_for(lambda found: found is None, SOON)
        assert "no master contends" in detector.detected.error
        leaders_seen = [d.leader.id for d in seen if d.leader is not None]
        assert len(leaders_seen) == 3 and len(set(leaders_seen)) == 3
    finally:
        for contender in made:
            await contender.close()


async def test_find_leader_reads_the_current_leader_once(zk_url: str) -> None:
    made = await _contenders(zk_url, 2)
    try:
        leader = await sole_leader(made, SOON)
        assert await asyncio.to_thread(find_leader, zk_url, SOON) == leader.info
    finally:
        for contender in made:
            await contender.close()


async def test_find_leader_explains_each_way_it_can_fail(
        zk_url: str, zookeeper: ZooKeeperServer) -> None:
    nobody = f"zk://127.0.0.1:{free_port()}/cluster"
    with pytest.raises(DetectionError, match=r"no ZooKeeper server of 127\.0\.0\.1:\d+ "
                                             r"answered within 1 s"):
        await asyncio.to_thread(find_leader, nobody, 1.0)
    with pytest.raises(DetectionError, match=r"no znode .* \(no master ever contended\)"):
        await asyncio.to_thread(find_leader, zk_url, SOON)
    path = zk_url.split("/", 3)[3]
    zk = client(zookeeper.hosts)
    try:
        zk.ensure_path(f"/{path}")
        with pytest.raises(DetectionError, match="no master contends under"):
            await asyncio.to_thread(find_leader, zk_url, SOON)
        zk.create(f"/{path}/{LABEL}_", b'{"pid": "nonsense"}', ephemeral=True, sequence=True)
        with pytest.raises(DetectionError, match="the leader's znode .*: the znode's JSON has "
                                                 "no http"):
            await asyncio.to_thread(find_leader, zk_url, SOON)
    finally:
        zk.stop()


async def test_a_malformed_leader_znode_means_no_leader_until_it_goes(
        zk_url: str, zookeeper: ZooKeeperServer, detector: LeaderDetector) -> None:
    path = "/" + zk_url.split("/", 3)[3]
    zk = client(zookeeper.hosts)
    made: list[LeaderContender] = []
    try:
        zk.ensure_path(path)
        bad = zk.create(f"{path}/{LABEL}_", b"\x00garbage", ephemeral=True, sequence=True)
        made = await _contenders(zk_url, 1)
        await eventually(lambda: "not UTF-8 JSON" in detector.detected.error, SOON,
                         "the bad znode reported", lambda: detector.detected)
        assert detector.leader is None and not made[0].leading  # it is behind the bad one
        zk.delete(bad)
        assert await detector.wait_for(lambda found: found is not None, SOON) == made[0].info
    finally:
        zk.stop()
        for contender in made:
            await contender.close()


@pytest.mark.parametrize("how", ["stop", "kill", "freeze"])
async def test_zookeeper_lost_then_back_the_detector_recovers_by_itself(
        own_zookeeper: ZooKeeperServer, how: str) -> None:
    url = own_zookeeper.url("/cluster")
    made = await _contenders(url, 2)
    detector = LeaderDetector(url, session_timeout=SESSION_TIMEOUT)
    detector.start()
    try:
        leader = await sole_leader(made, SOON)
        assert await detector.wait_for(lambda found: found is not None, SOON) == leader.info
        lose(own_zookeeper, how)
        await eventually(lambda: not detector.connected, SOON, "the detector disconnected")
        # Only the connection is lost: the last leader is kept (it may still be there).
        assert detector.leader == leader.info
        await asyncio.sleep(SESSION_TIMEOUT)
        restore(own_zookeeper, how)
        again = await sole_leader(made, SOON + SESSION_TIMEOUT)
        assert await detector.wait_for(lambda found: found == again.info, SOON) == again.info
        # And it still follows changes: the new leader withdraws, the other is detected.
        await again.close()
        made.remove(again)
        last = await sole_leader(made, SOON)
        assert await detector.wait_for(lambda found: found == last.info, SOON) == last.info
    finally:
        await detector.close()
        for contender in made:
            await contender.close()


async def test_an_expired_detector_session_forgets_the_leader_then_finds_it_again(
        zk_url: str, zookeeper: ZooKeeperServer, detector: LeaderDetector) -> None:
    made = await _contenders(zk_url, 1)
    try:
        leader = await sole_leader(made, SOON)
        await detector.wait_for(lambda found: found == leader.info, SOON)
        lost: list[Detected] = []
        detector.on_change(lambda d: lost.append(d) if d.leader is None else None)
        expire_session(zookeeper.hosts, detector)
        await eventually(lambda: lost, SOON, "the detector told the session expired")
        assert "session expired" in lost[0].error
        assert await detector.wait_for(lambda found: found == leader.info, SOON) == leader.info
    finally:
        for contender in made:
            await contender.close()
