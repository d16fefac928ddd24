"""Masters in high availability: contend through ZooKeeper, lead in terms, fenced by the database.

`HighAvailability` runs inside `cluster master --zk zk://…/PATH --db postgresql+psycopg://…`.
Every master so started contends (master/election.py); the one ZooKeeper names leads, the
others are standbys (master/standby.py: 307 to the leader). Contract:

- One actor called `master` runs in this OS process at a time: the `Standby` while this
  master does not lead, a `LeadingMaster` (the master actor of master/process.py) during a
  *term*; they are swapped, so for a moment neither runs (HTTP then answers 404).
- A term starts when the contender says we lead: open a `Store` of the term's own, claim
  the database's leader epoch (`Store.claim_leadership`), check we still lead, then spawn
  the master, which starts as a restarted master does — every task recovered from the
  database, slaves given the re-registration window, slave credentials read anew from the
  shared database — and then serves.
- A term ends, for good, as soon as any of these holds: the contender's lease lapsed or it
  reported a loss (session expired, connection gone past the lease, SIGSTOP past it: the
  lease is read from the clock, so a resumed master knows at once); the term's store is
  fenced (a write failed with `StoreFenced`: another master claimed a newer epoch); the
  recovery failed. The master actor is terminated and the standby takes over: **this master
  steps down in place and contends on**, no supervisor needed. What the old term had queued
  may still commit until another master claims, never after (every write checks the epoch
  inside its transaction), and a new term never shares the old term's store.
- Between the end of the lease and the step-down (at most one poll, `POLL` s, or the
  backlog a resumed process runs first) the master's message handlers, heartbeat and HTTP
  do nothing: messages are dropped (slaves re-send), requests answered 503.
- Fenced while ZooKeeper still names us leader, or unable to use the database for
  `withdraw_after` seconds: the contender withdraws and contends again at the back of the
  line, so another master gets its turn (and two masters never take the database from each
  other in a loop faster than that).
- Health (`/health`): failing while ZooKeeper is out of reach, or while ZooKeeper names this
  master leader but it cannot use the database; the term's store adds its own check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

import libproc
from libproc import delay
from libproc.metrics import metrics
from master.election import LeaderContender
from master.process import VERSION, Master, MasterConfig
from master.standby import Standby, leader_json
from master.store import Store, StoreError
from protos.detector import LeaderDetector
from protos.leader_info import LeaderInfo
from protos.zookeeper import DEFAULT_SESSION_TIMEOUT, ZkUrl, parse_zk_url

__all__ = ["HighAvailability", "LeadingMaster", "POLL", "Term", "WITHDRAW_AFTER"]

log = logging.getLogger("master.leadership")

POLL = 0.05  # how often a term checks that it still holds (the lease is a clock read)
WITHDRAW_AFTER = 10.0  # a leader that cannot use the database this long lets another try
ZK_CHECK = "master.zookeeper"
ELECTED = "master/elected"  # the /metrics/snapshot gauge: 1 while this master leads
CLOSE_WAIT = 30.0  # bound on closing a term's store in the background


class Term:
    """One leadership of this master: the contender's lease it rides on, and its store."""

    def __init__(self, number: int, contender: LeaderContender, ha: HighAvailability) -> None:
        self.number = number
        self.contender = contender
        self.lease_term = contender.term
        self._ha = ha
        self.store: Store | None = None
        self.epoch: int | None = None
        self.started_at = time.time()
        self.serving_at: float | None = None
        self.ended = ""  # why it ended; empty while it runs
        self.dropped = 0  # messages and requests refused once the lease had lapsed

    def lost(self) -> str | None:
        """Why this term no longer holds, or None while it does (any thread; cheap)."""
        if self.ended:
            return self.ended
        c = self.contender
        if self._ha.contender is not c:
            return "this master withdrew from the election"
        if not c.leading or c.term != self.lease_term:
            return "ZooKeeper no longer confirms this master's leadership (lease lapsed)"
        fenced = self.store.fenced() if self.store is not None else None
        if fenced is not None:
            return f"fenced: {fenced}"
        return None

    def holds(self) -> bool:
        return self.lost() is None

    def summary(self) -> dict[str, Any]:
        store = self.store
        return {"number": self.number, "epoch": self.epoch, "started_at": self.started_at,
                "serving_at": self.serving_at, "ended": self.ended or None,
                "writes_fenced": int(store.stats()["writes_fenced"]) if store else 0,
                "dropped_after_lease": self.dropped}


class LeadingMaster(Master):
    """The master actor of one term: `Master`, every message handler, the heartbeat and the
    HTTP route gated on the term still holding (see the module docstring)."""

    def __init__(self, store: Store, config: MasterConfig, ha: HighAvailability,
                 term: Term) -> None:
        super().__init__(store, config)
        self.ha = ha
        self.term = term
        self.recovery_error: str | None = None

    def initialize(self) -> None:
        try:
            super().initialize()
        except StoreError as exc:  # the database went away between the claim and the reads
            self.recovery_error = str(exc)
            log.error("term %d: recovery from the database failed: %s", self.term.number, exc)
            return
        self.term.serving_at = time.time()

    def install(self, message: Any, handler: Callable[..., Any], *fields: str) -> None:
        term = self.term

        def gated(sender: Any, *args: Any) -> Any:
            if term.holds():
                return handler(sender, *args)
            term.dropped += 1
            return None

        super().install(message, gated, *fields)

    def route(self, path: str, handler: Callable[[Any], Any], description: str = "") -> None:
        term = self.term

        def gated(request: Any) -> Any:
            if term.holds():
                return handler(request)
            term.dropped += 1
            return web.json_response(
                {"error": "this master has just lost its leadership and is stepping down; "
                          "retry in a moment (the leader is in ZooKeeper)", "leader": None},
                status=503, headers={"Retry-After": "1"})

        super().route(path, gated, description)

    def _heartbeat(self) -> None:
        if self.term.holds():
            super()._heartbeat()
        else:  # no slave is declared lost for silence this master caused by being stopped
            delay(self.config.heartbeat_interval, self.pid, self._heartbeat)

    def state_json(self) -> dict[str, Any]:
        state = super().state_json()
        state.update(self.ha.state(leading=True))
        return state

    def vars_text(self) -> str:
        return super().vars_text() + self.ha.vars_text()


class HighAvailability:
    """Contend for leadership and run this master's terms (see the module docstring).

    Create it after `libproc.start()`, then `await start()`; `await close()` at shutdown.
    Everything runs on the runtime's event loop.
    """

    def __init__(self, zk: ZkUrl | str, db_url: str, config: MasterConfig, *,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT,
                 withdraw_after: float = WITHDRAW_AFTER,
                 open_store: Callable[[str], Store] = Store.open) -> None:
        self.url = zk if isinstance(zk, ZkUrl) else parse_zk_url(zk)
        self.db_url = db_url
        self.config = config
        self.session_timeout = session_timeout
        self.withdraw_after = withdraw_after
        self._open_store = open_store
        self.info: LeaderInfo | None = None
        self.contender: LeaderContender | None = None
        self.detector: LeaderDetector | None = None
        self.actor: Standby | LeadingMaster | None = None
        self.term: Term | None = None  # the current term, while one runs
        self.last_term: dict[str, Any] | None = None
        self.problem = ""  # why this master, named leader, does not serve (yet)
        self.db_fault: str | None = None  # the database cannot be used to lead
        self.counters = {"terms": 0, "step_downs": 0, "withdrawals": 0}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closers: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the standby, start following the leader and contending (never blocks)."""
        pid = libproc.address().with_id("master")
        host = f"[{pid.host}]" if ":" in pid.host else pid.host
        self.info = LeaderInfo(pid=str(pid), http=f"http://{host}:{pid.port}",
                               id=uuid.uuid4().hex, version=VERSION)
        self.detector = LeaderDetector(self.url, session_timeout=self.session_timeout)
        self.detector.start()
        self.detector.on_change(lambda _: self._changed.set())
        libproc.add_health_check(ZK_CHECK, self._health)
        # As Mesos's master/elected: 1 on the master serving as the leader, 0 on the others
        # (each master serves its own /metrics and /metrics/snapshot, standbys too).
        metrics.gauge(ELECTED, lambda: 1.0 if isinstance(self.actor, LeadingMaster) else 0.0)
        await self._set_actor(self._standby())
        self._new_contender()
        self._task = asyncio.ensure_future(self._run())
        log.info("master %s contends for leadership under %s", pid, self.url)

    async def close(self) -> None:
        """Stop: the leader's actor first (its store flushed while it still holds the
        epoch), then withdraw from the election, so a standby takes over at once."""
        self._closing = True
        store = self.term.store if self.term is not None else None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        actor, self.actor = self.actor, None
        if actor is not None and actor.state in ("running", "created"):
            done = libproc.wait(actor)
            if isinstance(actor, LeadingMaster) and self.info is not None:
                # A standby takes the name at once: until this server is gone, requests
                # get its 503 (we still lead) or 307 (to whoever leads next), not a 404.
                standby = self.actor = self._standby()
                done.on_ready(lambda _: libproc.spawn(standby))
            libproc.terminate(actor)
            await done
        if store is not None:
            self._close_later(store)
        if self._closers:
            await asyncio.wait(set(self._closers), timeout=CLOSE_WAIT)
        libproc.remove_health_check(ZK_CHECK)
        metrics.remove(ELECTED)
        for worker in (self.contender, self.detector):
            if worker is not None:
                await worker.close()

    # -- terms ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            contender = self.contender
            assert contender is not None
            if not contender.leading:
                await self._pause(1.0)
                continue
            self.counters["terms"] += 1
            term = Term(self.counters["terms"], contender, self)
            self.term = term
            try:
                await self._serve(term)
            finally:
                self.term = None
                self.last_term = term.summary()

    async def _serve(self, term: Term) -> None:
        log.info("leading (term %d): claiming the database's leader epoch", term.number)
        if not await self._claim(term):
            term.ended = term.lost() or "could not claim the database"
            return
        assert term.store is not None
        master = LeadingMaster(term.store, self.config, self, term)
        await self._set_actor(master)
        self.problem = ""
        log.info("term %d: leader epoch %d claimed; recovering and serving as the leader",
                 term.number, term.epoch)
        while (why := term.lost() or (
                f"recovery failed: {master.recovery_error}" if master.recovery_error else None
                )) is None:
            await self._pause(POLL)
        term.ended = why
        self.counters["step_downs"] += 1
        log.warning("stepping down after term %d (epoch %s): %s", term.number, term.epoch, why)
        fenced = term.store.fenced() is not None
        await self._set_actor(self._standby())
        self._close_later(term.store)
        if fenced and term.contender.leading and self.contender is term.contender:
            await self._recontend("another master claimed the database while ZooKeeper "
                                  "named this one leader")
        elif master.recovery_error:
            await self._pause(1.0)

    async def _claim(self, term: Term) -> bool:
        """Open the term's store and claim the epoch, retrying while we lead; True once
        claimed and still leading (term.store, term.epoch set)."""
        started, backoff = time.monotonic(), 0.25
        owner = f"{self.info.pid if self.info else 'master'} term {term.number}"
        while term.holds() and not self._closing:
            store: Store | None = None
            try:
                self.problem = "opening the database"
                store = await asyncio.to_thread(self._open_store, self.db_url)
                self.problem = "claiming the database's leader epoch"
                epoch = await store.claim_leadership(owner)
            except (StoreError, OSError) as exc:
                if store is not None:
                    self._close_later(store)
                first = self.db_fault is None
                self.db_fault = self.problem = f"cannot use the database to lead: {exc}"
                (log.error if first else log.debug)("term %d: %s (retrying)", term.number, exc)
                if time.monotonic() - started > self.withdraw_after:
                    await self._recontend(f"the database was unusable for "
                                          f"{self.withdraw_after:g}s")
                    return False
                await self._pause(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self.db_fault is not None:
                log.info("term %d: the database can be used again", term.number)
            self.db_fault = None
            term.store, term.epoch = store, epoch
            if term.holds():
                self.problem = "recovering tasks from the database"
                return True
            self._close_later(store)  # lost while claiming: the next leader claims higher
            return False
        return False

    # -- helpers --------------------------------------------------------------------------

    def _new_contender(self) -> None:
        assert self.info is not None
        contender = LeaderContender(self.url, self.info, session_timeout=self.session_timeout)
        contender.start()
        contender.on_change(lambda _: self._changed.set())
        self.contender = contender

    async def _recontend(self, why: str) -> None:
        """Withdraw our member and contend again with a new one, at the back of the line."""
        self.counters["withdrawals"] += 1
        log.warning("withdrawing from the election and contending again: %s", why)
        old = self.contender
        self._new_contender()
        if old is not None:
            await old.close()

    async def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early on any leadership or leader change."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    async def _set_actor(self, actor: Standby | LeadingMaster) -> None:
        """Replace the `master` actor. The new one is spawned in the very call that removes
        the old one (a future's callbacks run at once), so no request finds neither: while
        the old one terminates, requests get 503 and Retry-After (libproc.http)."""
        old, self.actor = self.actor, None
        new = None if self._closing else actor
        if old is None or old.state not in ("running", "created"):
            if new is not None:
                self.actor = new
                libproc.spawn(new)
            return
        done = libproc.wait(old)
        if new is not None:
            self.actor = new
            done.on_ready(lambda _: libproc.spawn(new))
        libproc.terminate(old)
        await done

    def _standby(self) -> Standby:
        assert self.info is not None
        return Standby(self.info, self.leader, lambda: self.state(leading=False),
                       lambda: self.problem or "it is taking over as the leader")

    def _close_later(self, store: Store) -> None:
        async def close() -> None:
            try:
                await asyncio.wait_for(store.close(), CLOSE_WAIT)
            except (TimeoutError, StoreError) as exc:
                log.warning("closing a term's database connection failed: %s", exc)

        task = asyncio.ensure_future(close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # -- what others read -----------------------------------------------------------------

    def leader(self) -> LeaderInfo | None:
        """The leader as ZooKeeper last said (None while unknown)."""
        return self.detector.leader if self.detector is not None else None

    def _health(self) -> str | None:
        contender = self.contender
        if contender is not None and not contender.connected:
            return (f"not connected to ZooKeeper at {self.url.hosts}: this master can neither "
                    "lead nor tell who leads (it keeps trying)")
        return self.db_fault

    def state(self, *, leading: bool) -> dict[str, Any]:
        """The leadership part of /master/state (the standby's is only this, plus who it is)."""
        contender = self.contender
        term = self.term
        state: dict[str, Any] = {
            "leading": leading, "role": "leader" if leading else "standby",
            "leader": leader_json(self.info if leading else self.leader()),
            "zookeeper": {"url": str(self.url),
                          "connected": bool(contender is not None and contender.connected),
                          "member": contender.member if contender is not None else None,
                          "session_timeout": self.session_timeout},
            "term": term.summary() if term is not None and leading else None,
            "last_term": self.last_term, "problem": self.problem or None,
            **{f"ha_{k}": v for k, v in self.counters.items()},
        }
        if not leading and self.info is not None:
            state.update({"pid": self.info.pid, "version": VERSION})
        return state

    def vars_text(self) -> str:
        """/master/vars lines of the leader."""
        term = self.term
        lines = [("ha_leading", "1"), ("ha_term", str(term.number if term else 0)),
                 ("ha_epoch", str(term.epoch if term and term.epoch else 0)),
                 *((f"ha_{k}", str(v)) for k, v in self.counters.items())]
        return "".join(f"{k} {v}\n" for k, v in lines)
