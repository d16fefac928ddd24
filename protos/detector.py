"""Finding the leading master through ZooKeeper, for slaves and clients (Mesos's detector).

Masters contend under a `zk://` URL's path (master/election.py); the leader is the member
znode with the lowest sequence, and its data says where it is (protos/leader_info.py). This
module reads that, and lives in `protos/` because slaves and the CLI both need it and
`slave/` may not import `master/`.

- `find_leader(url, timeout)` — blocking, one look (the CLI): the leader's `LeaderInfo`, or
  `DetectionError` saying what is wrong (ZooKeeper unreachable — `ZooKeeperUnreachable` —,
  no master contends, the leader's znode is malformed).
- `LeaderDetector` — follows the leader for as long as it runs (a slave): a watch on the
  path's children, so a new leader is seen as soon as ZooKeeper says so. Changes reach the
  asyncio loop in order (`changes()`, `on_change`), each a `Detected`; the leader is None
  while nobody leads, while its znode cannot be read, and once the session is lost (while
  only the connection is lost, the last leader is kept: a master may still be there). The
  detector reconnects by itself and reads the leader anew each time it does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from protos.leader_info import LeaderInfo, LeaderInfoError, members
from protos.zookeeper import (
    DEFAULT_SESSION_TIMEOUT,
    LoopChannel,
    ZkUrl,
    ZooKeeperWorker,
    kazoo_log,
    parse_zk_url,
)

__all__ = ["Detected", "DetectionError", "LeaderDetector", "ZooKeeperUnreachable",
           "find_leader"]

log = logging.getLogger("detector")


class DetectionError(Exception):
    """The leader cannot be found; the message says why and what to check."""


class ZooKeeperUnreachable(DetectionError):
    """No ZooKeeper server of the URL answered at all (rather than: nobody leads)."""


@dataclass(frozen=True, slots=True)
class Detected:
    """What the detector knows: the leader (None when none) and its member znode's name."""

    leader: LeaderInfo | None
    member: str | None = None
    error: str = ""


def _read_leader(client: KazooClient, url: ZkUrl, timeout: float,
                 watch: Callable[..., object] | None = None) -> Detected:
    """One look at the path: the lowest member and its data (blocking, bounded)."""
    for _ in range(5):  # the leader may go between listing and reading: look again
        try:
            children = client.get_children_async(url.path, watch).get(timeout=timeout)
        except NoNodeError:
            # Tell us when the first master makes the path; made meanwhile: list it again.
            if watch is not None and client.exists_async(url.path, watch).get(timeout=timeout):
                continue
            return Detected(None, None, f"no znode {url.path} (no master ever contended)")
        ordered = members(list(children))
        if not ordered:
            return Detected(None, None, f"no master contends under {url.path}")
        try:
            data, _stat = client.get_async(f"{url.path}/{ordered[0]}").get(timeout=timeout)
        except NoNodeError:
            continue
        try:
            return Detected(LeaderInfo.decode(data), ordered[0])
        except LeaderInfoError as exc:
            return Detected(None, ordered[0], f"the leader's znode {url.path}/{ordered[0]}: "
                                              f"{exc}")
    return Detected(None, None, f"the leader under {url.path} kept changing; try again")


def find_leader(url: ZkUrl | str, timeout: float = 10.0) -> LeaderInfo:
    """The current leader under `url`, read once; raises DetectionError (or ZkUrlError)."""
    zk_url = url if isinstance(url, ZkUrl) else parse_zk_url(url)
    client = KazooClient(hosts=zk_url.hosts, timeout=max(timeout, 1.0), logger=kazoo_log)
    try:
        try:
            client.start(timeout=timeout)
        except KazooTimeoutError:
            raise ZooKeeperUnreachable(f"no ZooKeeper server of {zk_url.hosts} answered within "
                                 f"{timeout:g} s; check --master and that ZooKeeper runs") from None
        try:
            found = _read_leader(client, zk_url, timeout)
        except (KazooException, KazooTimeoutError) as exc:
            raise DetectionError(f"reading {zk_url} failed: {type(exc).__name__} "
                                 f"{exc}".rstrip()) from None
        if found.leader is None:
            raise DetectionError(f"no leading master at {zk_url}: {found.error}")
        return found.leader
    finally:
        try:
            client.stop()
            client.close()
        except Exception:  # noqa: BLE001 - nothing to undo on an unreachable server
            pass


class LeaderDetector(ZooKeeperWorker):
    """Follow the leading master under `url`'s path; see the module's docstring.

    Create and `start()` it on the loop that wants the changes; `close()` is a coroutine of
    that loop; `leader` may be read from any thread.
    """

    # The watch tells of every change (and kazoo wakes us on every reconnect): the periodic
    # re-read is only a safety net, kept rare since every slave and client does it.
    _idle_interval = 30.0

    def __init__(self, url: ZkUrl | str, *,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        super().__init__(url, session_timeout=session_timeout, name="leader-detector")
        self._detected = Detected(None, None, "not connected to ZooKeeper yet")
        self._channel: LoopChannel[Detected] | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin following (connects in the background); call on the loop."""
        if self._channel is not None:
            raise RuntimeError("the detector was already started")
        self._channel = LoopChannel(loop or asyncio.get_running_loop(), self._detected)
        self._start_worker()

    @property
    def leader(self) -> LeaderInfo | None:
        """The leader as last detected (None: nobody leads, or we cannot tell)."""
        return self._detected.leader

    @property
    def detected(self) -> Detected:
        return self._detected

    def changes(self) -> AsyncIterator[Detected]:
        """The current `Detected`, then every change, on the loop; ends at `close()`."""
        if self._channel is None:
            raise RuntimeError("start() the detector on its loop first")
        return self._channel.subscribe()

    def on_change(self, callback: Callable[[Detected], object]) -> None:
        """Call `callback(detected)` on the loop at every change."""
        if self._channel is None:
            raise RuntimeError("start() the detector on its loop first")
        self._channel.add_callback(callback)

    async def wait_for(self, predicate: Callable[[LeaderInfo | None], bool],
                       timeout: float) -> LeaderInfo | None:
        """Wait until `predicate(leader)` holds; raises TimeoutError after `timeout` s."""
        async def first() -> LeaderInfo | None:
            async for found in self.changes():
                if predicate(found.leader):
                    return found.leader
            raise RuntimeError("the detector was closed")
        return await asyncio.wait_for(first(), timeout)

    def refresh(self) -> None:
        """Read the leader again now (any thread): for a hint that it may have changed,
        such as a standby saying it does not lead. What is read comes from ZooKeeper only."""
        self._wake()

    async def close(self) -> None:
        """Stop following: end the session and the threads."""
        await asyncio.to_thread(self._close_worker)
        if self._channel is not None:
            self._channel.close()

    # -- the worker thread ------------------------------------------------------------------

    def _set(self, detected: Detected) -> None:
        if detected == self._detected:
            return
        self._detected = detected
        if detected.leader is not None:
            log.info("leading master %s (%s, member %s)", detected.leader.pid,
                     detected.leader.http, detected.member)
        else:
            log.warning("no leading master detected: %s", detected.error)
        if self._channel is not None:
            self._channel.publish(detected)

    def _step(self) -> None:
        if KazooState.LOST in self._take_states():
            self._set(Detected(None, None, "ZooKeeper session expired or closed"))
        if not self.connected:
            return
        self._set(_read_leader(self._client, self.url, self.session_timeout, self._wake))
