"""Leader election of masters through ZooKeeper (Mesos's ZooKeeperMasterContender).

A `LeaderContender` keeps one ZooKeeper session and, in it, one ephemeral sequential member
znode under the cluster's path holding this master's `LeaderInfo` (protos/leader_info.py:
the format slaves and clients read). The member with the lowest sequence leads.

Contract:
- `leading` is True only while ZooKeeper has confirmed, within the last lease, that our
  member is the lowest. The lease runs from the moment before the confirming request was
  sent, for `LEASE_FRACTION` of the session timeout: ZooKeeper cannot expire our session
  (and so let another master lead) before a full session timeout has passed since it last
  heard from us, so a master whose lease holds is the only leader. A process stopped
  (SIGSTOP) or cut off past its lease therefore reads `leading == False` the instant it
  runs again, before any message from ZooKeeper; it leads again only once ZooKeeper
  confirms it anew (a new `term`). Writes still need the database's fencing epoch, because
  a write started under a lease may land after it.
- Changes reach the master on its asyncio loop, in order: `Leadership(leading, term,
  reason)` through `changes()` (an async iterator that starts with the current state) or
  `on_change(callback)` (called on the loop). `term` counts this contender's leaderships:
  a callback may compare it to know that the leadership it started with is still the one.
- Leadership is lost when the session expires or is closed, when the connection stays lost
  past the lease, or when ZooKeeper shows our member is not (or no longer) the lowest. After
  a session expiry the contender re-contends by itself with a new member (it goes to the
  back of the line); if the connection comes back within the session, the same member keeps
  its place.
- `close()` withdraws: the session ends and the member goes at once, so a standby leads
  without waiting for the session timeout (a graceful shutdown's failover is fast).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from kazoo.client import KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError

from protos.leader_info import LABEL, LeaderInfo, members
from protos.zookeeper import DEFAULT_SESSION_TIMEOUT, LoopChannel, ZkUrl, ZooKeeperWorker

__all__ = ["LEASE_FRACTION", "LeaderContender", "Leadership"]

log = logging.getLogger("master.election")

# The share of the session timeout a confirmation is trusted for; the rest is margin for the
# time between ZooKeeper's clock and ours, and for ZooKeeper expiring sessions once a tick.
LEASE_FRACTION = 0.8
RENEWALS_PER_LEASE = 4


@dataclass(frozen=True, slots=True)
class Leadership:
    """A change of this master's leadership: `term` counts the leaderships it has won."""

    leading: bool
    term: int
    reason: str


class LeaderContender(ZooKeeperWorker):
    """Contend for leadership of the masters under `url`'s path; see the module's contract.

    Create and `start()` it on the master's event loop; every other method and property may
    be used from any thread except `close()`, which is a coroutine of that loop.
    """

    def __init__(self, url: ZkUrl | str, info: LeaderInfo, *,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        super().__init__(url, session_timeout=session_timeout, name="leader-contender")
        self.info = info
        self._data = info.encode()
        self._lease = session_timeout * LEASE_FRACTION
        self._state_lock = threading.Lock()
        self._lease_until = 0.0  # time.monotonic() until which our leadership holds
        self._node: str | None = None  # our member's name, in session `_node_session`
        self._node_session: int | None = None
        self._creating_in: int | None = None  # session of a create whose answer was lost
        self._reported = Leadership(False, 0, "contending")
        self._term = 0
        self._channel: LoopChannel[Leadership] | None = None

    # -- the master's side ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin contending (connects in the background); call on the master's loop."""
        if self._channel is not None:
            raise RuntimeError("the contender was already started")
        self._channel = LoopChannel(loop or asyncio.get_running_loop(), self._reported)
        self._start_worker()

    @property
    def leading(self) -> bool:
        """True only while ZooKeeper's last confirmation of our lead is within its lease."""
        with self._state_lock:
            return (self._reported.leading and time.monotonic() < self._lease_until
                    and self._client.state != KazooState.LOST)

    @property
    def term(self) -> int:
        """The number of the current (or last) leadership; 0 before the first."""
        return self._term

    @property
    def member(self) -> str | None:
        """Our member znode's full path, once created (for logs and /master/state)."""
        node = self._node
        return None if node is None else f"{self.url.path}/{node}"

    def changes(self) -> AsyncIterator[Leadership]:
        """The current `Leadership`, then every change, on the loop; ends at `close()`."""
        return self._require_channel().subscribe()

    def on_change(self, callback: Callable[[Leadership], object]) -> None:
        """Call `callback(leadership)` on the master's loop at every change."""
        self._require_channel().add_callback(callback)

    async def wait_leading(self, timeout: float) -> Leadership:
        """Wait until this master leads; raises TimeoutError after `timeout` seconds."""
        async def first() -> Leadership:
            async for change in self.changes():
                if change.leading:
                    return change
            raise RuntimeError("the contender was closed before it led")
        return await asyncio.wait_for(first(), timeout)

    async def close(self) -> None:
        """Withdraw: end the session (our member goes at once) and the threads."""
        await asyncio.to_thread(self._close_worker)
        with self._state_lock:
            self._lease_until = 0.0
        if self._reported.leading:
            self._report(False, "withdrawn")
        if self._channel is not None:
            self._channel.close()

    def _require_channel(self) -> LoopChannel[Leadership]:
        if self._channel is None:
            raise RuntimeError("start() the contender on the master's loop first")
        return self._channel

    # -- the worker thread ------------------------------------------------------------------

    def _interval(self) -> float:
        """Renew several times per lease; wake exactly when the lease would run out."""
        interval = self._lease / RENEWALS_PER_LEASE
        if self._reported.leading:
            interval = min(interval, self._lease_until - time.monotonic())
        return interval

    def _call_timeout(self) -> float:
        """While leading, no request may outlast the lease: its end must be reported."""
        if self._reported.leading:
            return max(0.05, min(self.session_timeout, self._lease_until - time.monotonic()))
        return self.session_timeout

    def _report(self, leading: bool, reason: str) -> None:
        with self._state_lock:
            if leading == self._reported.leading:
                return
            if leading:
                self._term += 1
            else:
                self._lease_until = 0.0
            self._reported = Leadership(leading, self._term, reason)
            change = self._reported
        (log.info if leading else log.warning)(
            "leadership %s: term %d, %s (member %s)", "gained" if leading else "lost",
            change.term, reason, self.member)
        if self._channel is not None:
            self._channel.publish(change)

    def _step(self) -> None:
        if KazooState.LOST in self._take_states():
            self._forget_member()
            self._report(False, "ZooKeeper session expired or closed")
        session = self.session_id
        if self._node is not None and session is not None and session != self._node_session:
            self._forget_member()
            self._report(False, "ZooKeeper session replaced")
        if self._reported.leading and time.monotonic() >= self._lease_until:
            # Whether or not kazoo has noticed yet (a frozen server: requests time out).
            self._report(False, "no word from ZooKeeper within the lease")
        if not self.connected or session is None:
            return
        sent = time.monotonic()
        children = self._children()
        if self.session_id != session:
            return  # the session changed under the call: start over at the next step
        ours = self._find_member(children, session)
        if ours is None:
            self._create_member(session)
            self._events.put("created")
            return
        lowest = members(children)[0]
        if ours == lowest:
            with self._state_lock:
                self._lease_until = sent + self._lease
            self._report(True, "our member is the lowest")
        else:
            self._report(False, f"{lowest} leads")

    def _children(self) -> list[str]:
        """The path's children, watched; the path is made when missing."""
        try:
            return list(self._call(self._client.get_children_async(self.url.path, self._wake)))
        except NoNodeError:
            self._call_ensure_path()
            return list(self._call(self._client.get_children_async(self.url.path, self._wake)))

    def _call_ensure_path(self) -> None:
        try:
            self._call(self._client.ensure_path_async(self.url.path))
        except NodeExistsError:
            pass

    def _find_member(self, children: list[str], session: int) -> str | None:
        """Our member among children; after a create whose answer was lost, look for the
        member ZooKeeper may have made for us (its ephemeral owner is our session)."""
        ordered = members(children)
        if self._node is not None and self._node in ordered:
            return self._node
        if self._node is not None:
            self._forget_member()
            self._report(False, "our member was deleted")
        if self._creating_in == session:
            for name in ordered:
                stat = self._call(self._client.exists_async(f"{self.url.path}/{name}"))
                if stat is not None and stat.ephemeralOwner == session:
                    self._adopt(name, session)
                    return name
        return None

    def _create_member(self, session: int) -> None:
        self._creating_in = session
        created = self._call(self._client.create_async(
            f"{self.url.path}/{LABEL}_", self._data, ephemeral=True, sequence=True))
        self._adopt(str(created).rsplit("/", 1)[-1], session)
        log.info("contending for leadership as %s (session 0x%x)", self.member, session)

    def _adopt(self, name: str, session: int) -> None:
        self._node, self._node_session, self._creating_in = name, session, None

    def _forget_member(self) -> None:
        with self._state_lock:
            self._lease_until = 0.0
        self._node = self._node_session = None
