"""Which master a slave talks to under `--master zk://…/PATH`: the leader ZooKeeper names.

`LeaderFollower(url)` wraps `protos.detector.LeaderDetector`. `cluster slave` waits for a
first leader (`first_leader`), then `follow(slave)` hands every later change to the slave's
registration, on the slave's own loop, in order (`Registration.leader_changed`). Contract:

- The leader comes from ZooKeeper only. A standby's `NotLeaderMessage` (unsigned, anyone
  may forge one) only makes the follower read ZooKeeper again (`refresh`, at most once a
  second): the worst a forgery does is one extra look.
- While nobody leads (a failover, ZooKeeper out of reach) the slave keeps its last master:
  it may still be there, and the next leader shows up as a change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import libproc
from protos.detector import Detected, LeaderDetector
from protos.leader_info import LeaderInfo
from protos.zookeeper import ZkUrl

if TYPE_CHECKING:
    from slave.process import Slave

__all__ = ["LeaderFollower", "REFRESH_INTERVAL"]

log = logging.getLogger("slave")

REFRESH_INTERVAL = 1.0  # at most one extra ZooKeeper read a second, whatever is hinted


class LeaderFollower:
    """Follow the leading master under a `zk://` URL for one slave (see the module doc)."""

    def __init__(self, url: ZkUrl | str) -> None:
        self.detector = LeaderDetector(url)
        self.url = self.detector.url
        self._last_refresh = -1e9
        self.refreshes = 0
        self.hints_ignored = 0

    def start(self) -> None:
        """Connect in the background; call on the slave's loop."""
        self.detector.start()

    async def first_leader(self, stop: asyncio.Event, every: float = 10.0) -> LeaderInfo | None:
        """Wait until ZooKeeper names a leader (logging every `every` s why not yet), or
        until `stop` is set (None)."""
        while not stop.is_set():
            try:
                leader = await self.detector.wait_for(lambda found: found is not None, every)
            except TimeoutError:
                log.warning("no leading master under %s yet (%s); still waiting", self.url,
                            self.detector.detected.error or "nobody leads")
                continue
            if leader is not None:
                return leader
        return None

    def follow(self, slave: Slave) -> None:
        """From now on, tell `slave`'s registration of every change of leader."""
        def changed(found: Detected) -> None:
            if slave.state in ("created", "running"):
                libproc.dispatch(slave.pid, slave.registration.leader_changed, found.leader,
                                 found.member)

        self.detector.on_change(changed)
        changed(self.detector.detected)  # what changed before we listened, or the start

    def refresh(self) -> bool:
        """Read ZooKeeper again soon (a hint that the leader changed); False when one was
        asked for less than REFRESH_INTERVAL ago."""
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_INTERVAL:
            self.hints_ignored += 1
            return False
        self._last_refresh = now
        self.refreshes += 1
        self.detector.refresh()
        return True

    async def close(self) -> None:
        await self.detector.close()
