"""The `master` process of a master that does not lead: it points everyone at the leader.

Under `cluster master --zk`, every master that is not the leader runs this actor in place of
the master actor (master/leadership.py swaps them). It keeps no state and writes nothing.
Contract:

- HTTP: every request is answered `307 Temporary Redirect` to the same path and query on the
  leader's HTTP address (from ZooKeeper, `protos/detector.py`), with a JSON body saying who
  leads; a 307 keeps the method and body, so a redirected `POST` is re-sent as a `POST`.
  `GET /master/state` is answered here: `{"leading": false, "role": "standby", "leader":
  {...} or null, ...}`. While no leader is known, or the leader ZooKeeper names is this very
  master (it is still claiming the database or recovering), the answer is `503` with
  `Retry-After: 1` and `{"error": …, "leader": …}`: nothing was done, try again.
- Messages (any name, from anyone): dropped, and the sender is told `NotLeaderMessage` —
  unsigned, at most once a second per sender UPID and `MAX_HINTS_PER_SECOND` in all, so
  a flood of forged senders makes this master send a bounded trickle. A slave that gets it
  looks the leader up in ZooKeeper again; it never takes the leader from the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from libproc import UPID, ProtobufProcess
from libproc.metrics import metrics
from protos import auth
from protos import cluster_pb2 as pb
from protos.leader_info import LeaderInfo

__all__ = ["MAX_HINTS_PER_SECOND", "Standby", "leader_json"]

log = logging.getLogger("master.standby")

MAX_HINTS_PER_SECOND = 100
STATE_PATH = "/master/state"


def leader_json(leader: LeaderInfo | None) -> dict[str, str] | None:
    """How /master/state and the standby's answers show a leader."""
    if leader is None:
        return None
    return {"pid": leader.pid, "http": leader.http, "id": leader.id, "version": leader.version}


class Standby(ProtobufProcess):
    """Process `master` while this master does not lead (see the module docstring).

    `leader()` is the leader as ZooKeeper last said (None: unknown), `state()` the JSON of
    `/master/state`, `own` this master's own info (to tell "the leader is me, still
    starting" from "the leader is elsewhere"), `busy()` why this master, named leader,
    cannot serve yet.
    """

    def __init__(self, own: LeaderInfo, leader: Callable[[], LeaderInfo | None],
                 state: Callable[[], dict[str, Any]], busy: Callable[[], str]) -> None:
        super().__init__("master")
        self.own = own
        self._leader = leader
        self._state_json = state
        self._why_busy = busy
        self._per_sender = auth.Refusals(interval=1.0)
        self._second = 0
        self._hints_this_second = 0
        self.hints_sent = 0
        self.hints_suppressed = 0

    def initialize(self) -> None:
        self.route("/", self._http)

    # -- HTTP ---------------------------------------------------------------------------

    def _http(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == STATE_PATH and request.method in ("GET", "HEAD"):
            return web.json_response(self._state_json())
        leader = self._leader()
        body: dict[str, Any] = {"leader": leader_json(leader)}
        if leader is None or leader.pid == self.own.pid:
            body["error"] = (f"this master is not serving: {self._why_busy()}; retry in a moment"
                             if leader is not None else
                             "no master leads at the moment (an election or a recovery is "
                             "under way, or ZooKeeper cannot be reached); retry in a moment")
            return web.json_response(body, status=503, headers={"Retry-After": "1"})
        location = leader.http.rstrip("/") + request.raw_path
        body["error"] = f"this master is a standby; the leader is {leader.pid} at {leader.http}"
        return web.json_response(body, status=307, headers={"Location": location})

    # -- messages -------------------------------------------------------------------------

    def visit_message(self, sender: UPID, name: str, body: bytes) -> None:
        metrics.inc("master/standby_messages")
        now = time.monotonic()
        second = int(now)
        if second != self._second:
            self._second, self._hints_this_second = second, 0
        if (not self._per_sender.refuse(str(sender), now)
                or self._hints_this_second >= MAX_HINTS_PER_SECOND):
            self.hints_suppressed += 1
            return
        self._hints_this_second += 1
        self.hints_sent += 1
        leader = self._leader()
        log.debug("%s from %s: not the leader; told it so", name, sender)
        self.send(sender, pb.NotLeaderMessage(
            leader=leader.pid if leader is not None and leader.pid != self.own.pid else "",
            reason="this master is a standby"))
