"""Leader election against a real private ZooKeeper (master/election.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from contender_child import ChildContender
from zk_helpers import (
    client,
    eventually,
    expire_session,
    info,
    leaders,
    lose,
    restore,
    sole_leader,
)

from conftest import SESSION_TIMEOUT
from ha_servers import ZooKeeperServer
from master.election import LEASE_FRACTION, LeaderContender, Leadership
from protos.leader_info import LABEL, LeaderInfo, members

# Bounds for waits. A withdrawn or expired member goes at once; a silent one after the
# session timeout, and ZooKeeper checks expiry once a tick: so "within the session timeout"
# is asserted as within the timeout plus a margin for a loaded machine.
SOON = 10.0
FAILOVER = SESSION_TIMEOUT + 5.0


@pytest.fixture
async def contenders(zk_url: str) -> AsyncIterator[list[LeaderContender]]:
    """Three started contenders under a fresh path; all closed at the end."""
    made = [LeaderContender(zk_url, info(i), session_timeout=SESSION_TIMEOUT) for i in range(3)]
    for contender in made:
        contender.start()
    try:
        yield made
    finally:
        for contender in made:
            await contender.close()


async def test_three_contenders_exactly_one_leads_the_lowest_member(
        contenders: list[LeaderContender], zookeeper: ZooKeeperServer) -> None:
    leader = await sole_leader(contenders, SOON)
    await eventually(lambda: all(c.member for c in contenders), SOON, "every member made")
    path = contenders[0].url.path
    zk = client(zookeeper.hosts)
    try:
        ordered = members(zk.get_children(path))
        assert len(ordered) == 3
        assert leader.member == f"{path}/{ordered[0]}"
        data, _ = zk.get(f"{path}/{ordered[0]}")
        assert LeaderInfo.decode(data) == leader.info
        stat = zk.exists(leader.member)
        assert stat is not None and stat.ephemeralOwner == leader.session_id
    finally:
        zk.stop()
    # For two renewals of the lease: always exactly that one, never two.
    deadline = time.monotonic() + SESSION_TIMEOUT * LEASE_FRACTION * 0.5
    while time.monotonic() < deadline:
        assert leaders(contenders) == [leader]
        await asyncio.sleep(0.02)
    assert leader.term == 1 and all(c.term == 0 for c in contenders if c is not leader)


async def test_changes_start_with_the_current_state_and_report_each_gain(
        contenders: list[LeaderContender]) -> None:
    leader = await sole_leader(contenders, SOON)
    seen: list[Leadership] = []
    leader.on_change(seen.append)
    stream = leader.changes()
    first = await asyncio.wait_for(anext(stream), SOON)
    assert first == Leadership(True, 1, first.reason) and "lowest" in first.reason
    assert (await leader.wait_leading(SOON)).term == 1
    await leader.close()
    with pytest.raises(StopAsyncIteration):  # closed: the stream ends after the withdrawal
        while True:
            change = await asyncio.wait_for(anext(stream), SOON)
            assert change.leading is False
    assert seen and seen[-1].leading is False and not leader.leading


async def test_a_withdrawn_leader_hands_over_without_waiting_for_its_session(
        contenders: list[LeaderContender], zookeeper: ZooKeeperServer) -> None:
    leader = await sole_leader(contenders, SOON)
    member = leader.member
    await leader.close()
    zk = client(zookeeper.hosts)
    try:
        assert member is not None and zk.exists(member) is None  # gone at once
    finally:
        zk.stop()
    rest = [c for c in contenders if c is not leader]
    successor = await sole_leader(rest, SOON)
    assert successor.term == 1 and not leader.leading


@pytest.fixture
async def child_leads(zk_url: str, tmp_path: Path
                      ) -> AsyncIterator[tuple[ChildContender, LeaderContender]]:
    """A contender in its own OS process, leading; a standby in ours, behind it."""
    child = ChildContender(zk_url, 7, SESSION_TIMEOUT, tmp_path / "child.log")
    standby = LeaderContender(zk_url, info(1), session_timeout=SESSION_TIMEOUT)
    try:
        child.wait_for(lambda x: x["event"] == "status" and x["leading"], SOON,
                       "the child leading")
        standby.start()
        await eventually(lambda: standby.member is not None, SOON, "standby's member")
        assert not standby.leading
        yield child, standby
    finally:
        child.close()
        await standby.close()


async def test_a_killed_leader_is_replaced_once_its_session_expires(
        child_leads: tuple[ChildContender, LeaderContender]) -> None:
    child, standby = child_leads
    killed = child.signal(signal.SIGKILL)
    await eventually(lambda: standby.leading, FAILOVER, "the standby leading after kill -9")
    # Not before ZooKeeper expired the dead session: it waits a session timeout after it
    # last heard from it (at most a third of the timeout before the kill: kazoo's pings).
    assert time.monotonic() - killed >= SESSION_TIMEOUT * 0.5


async def test_an_expired_session_loses_leadership_and_contends_again_at_the_back(
        contenders: list[LeaderContender], zookeeper: ZooKeeperServer) -> None:
    leader = await sole_leader(contenders, SOON)
    old_member, old_session = leader.member, leader.session_id
    lost: list[Leadership] = []
    leader.on_change(lambda change: lost.append(change) if not change.leading else None)
    expire_session(zookeeper.hosts, leader)
    rest = [c for c in contenders if c is not leader]
    successor = await sole_leader(rest, SOON)
    await eventually(lambda: lost, SOON, "the old leader told it lost")
    assert "session" in lost[0].reason and not leader.leading
    # It re-contends by itself, in a new session, behind the new leader.
    await eventually(lambda: leader.member not in (None, old_member), SOON, "a new member")
    assert leader.session_id != old_session
    assert successor.member is not None and leader.member is not None
    assert leader.member.rsplit("_", 1)[1] > successor.member.rsplit("_", 1)[1]
    assert leaders(contenders) == [successor] and leader.term == 1
    # Re-elected only when the ones ahead of it go: a new term.
    for contender in rest:
        await contender.close()
    await eventually(lambda: leader.leading, SOON, "the old leader re-elected")
    assert leader.term == 2


async def test_a_sigstopped_leader_learns_it_lost_and_leads_only_when_reelected(
        child_leads: tuple[ChildContender, LeaderContender]) -> None:
    child, standby = child_leads
    stopped = child.signal(signal.SIGSTOP)
    changes = standby.changes()
    gained = await asyncio.wait_for(_first_gain(changes), FAILOVER)
    elected_at = time.monotonic()
    assert gained.term == 1
    await asyncio.sleep(0.5)
    resumed = child.signal(signal.SIGCONT)
    # The first thing it believes on waking is that it does not lead: its lease ran out
    # while it was stopped, before ZooKeeper has said a word to it.
    first = child.wait_for(lambda x: x["event"] == "status", SOON, "a status", resumed)
    assert first["leading"] is False
    child.wait_for(lambda x: x["event"] == "change" and not x["leading"], SOON,
                   "the child told it lost", stopped)
    # Never two leaders: the child's last "leading" is before it was stopped, so before
    # the standby was elected.
    believed = [x["t"] for x in child.lines("status") if x["leading"]]
    assert believed and max(believed) < stopped < elected_at
    # For a while after waking (past its old lease and a session timeout): no leading.
    await asyncio.sleep(SESSION_TIMEOUT)
    assert not [x for x in child.lines() if x["t"] > resumed and x["leading"]]
    assert standby.leading
    # Re-elected once the standby withdraws: a second term of the child.
    await standby.close()
    again = child.wait_for(lambda x: x["event"] == "change" and x["leading"], SOON,
                           "the child re-elected", resumed)
    assert again["term"] == 2


async def _first_gain(changes: AsyncIterator[Leadership]) -> Leadership:
    async for change in changes:
        if change.leading:
            return change
    raise AssertionError("the stream ended before a gain")


async def test_a_deleted_member_loses_leadership_and_is_made_again(
        contenders: list[LeaderContender], zookeeper: ZooKeeperServer) -> None:
    leader = await sole_leader(contenders, SOON)
    member = leader.member
    assert member is not None
    zk = client(zookeeper.hosts)
    try:
        zk.delete(member)  # an operator (or an attacker) removes the leader's znode
    finally:
        zk.stop()
    rest = [c for c in contenders if c is not leader]
    await sole_leader(rest, SOON)
    await eventually(lambda: leader.member not in (None, member), SOON, "a new member")
    assert not leader.leading and len(leaders(contenders)) == 1


async def test_foreign_znodes_under_the_path_change_nothing(
        contenders: list[LeaderContender], zookeeper: ZooKeeperServer) -> None:
    leader = await sole_leader(contenders, SOON)
    path = contenders[0].url.path
    zk = client(zookeeper.hosts)
    try:
        # 1,000 znodes that are not members, in one burst of watches.
        results = [zk.create_async(f"{path}/{name}", b"\xff" * 64)
                   for i in range(250)
                   for name in (f"lock-{i}", f"{LABEL}_x{i}", f"{LABEL}_{i}", f"info_{i:010d}")]
        for result in results:
            result.get(timeout=30)
        await asyncio.sleep(SESSION_TIMEOUT * LEASE_FRACTION / 2)  # a renewal or two later
        assert leaders(contenders) == [leader] and leader.term == 1
        assert len(zk.get_children(path)) == 1003
    finally:
        zk.stop()


@pytest.mark.parametrize("how", ["stop", "kill", "freeze"])
async def test_zookeeper_lost_then_back_every_contender_recovers_by_itself(
        own_zookeeper: ZooKeeperServer, how: str) -> None:
    url = own_zookeeper.url("/cluster")
    made = [LeaderContender(url, info(i), session_timeout=SESSION_TIMEOUT) for i in range(3)]
    for contender in made:
        contender.start()
    try:
        leader = await sole_leader(made, SOON)
        term = leader.term
        told: list[Leadership] = []
        leader.on_change(told.append)
        lose(own_zookeeper, how)
        # Nobody may believe it leads once its lease is over.
        await eventually(lambda: not leaders(made), SESSION_TIMEOUT, "leadership lost")
        await asyncio.sleep(SESSION_TIMEOUT)  # down past the session timeout
        assert not leaders(made)
        # ...and the leader was told so while ZooKeeper was still away (no request of its
        # own, hanging on a frozen server, held the news back).
        assert [(c.leading, c.term) for c in told] == [(False, term)]
        restore(own_zookeeper, how)
        again = await sole_leader(made, SOON + SESSION_TIMEOUT)
        # A new term: the old leader's (its session survived: same member, same place), or
        # another's first.
        assert again.term == (term + 1 if again is leader else 1)
        await asyncio.sleep(SESSION_TIMEOUT * LEASE_FRACTION / 2)
        assert leaders(made) == [again]
    finally:
        for contender in made:
            await contender.close()
