"""Keep the tasks a command waits for current: from the master's event stream when it has
one, else by polling (`cluster submit --wait`, `cluster wait`).

With events the tasks are fetched once, right after subscribing (so nothing is missed in
between), then kept current by applying `task` and `progress` events: no request is made
while tasks run, however many they are. The state is fetched again only when the stream
says so (`reset`, or an event it could not read; at most once a second), and every
`SAFETY_REFETCH` seconds as a safety net against a change the master did not publish.
Without events (a master older than the stream, 503 past its subscriber cap, or a stream
that could not be resumed) the tasks are fetched every `poll` seconds, as before; after a
transient refusal the stream is tried again every `RESUBSCRIBE_EVERY` seconds.

Contract: the constructor raises ClusterError for an unknown task id or an unreachable
master (before any waiting); `step()` waits at most about its `timeout` (a poll interval
when polling) and raises ClusterError when a fetch fails. Changes to `view` happen under
`lock`, which a renderer on another thread (rich's Live) takes while it reads. Call
`close()` when done (it ends the stream's thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cli.client import MasterClient
from cli.event_feed import Event, EventFeed, Gone, Refusal, Reset
from cli.taskset import TaskSet

__all__ = ["PER_TASK_FETCH_LIMIT", "Follower", "fetch_tasks"]

PER_TASK_FETCH_LIMIT = 10  # more ids than this: one listing instead of a request per task
SAFETY_REFETCH = 30.0  # seconds between fetches while events flow
RESUBSCRIBE_EVERY = 30.0  # seconds between tries of the stream after a transient refusal
MIN_REFETCH = 1.0  # seconds between fetches asked for by the stream


def fetch_tasks(client: MasterClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The current JSON of each task; ClusterError (the master's words) for an unknown id."""
    if len(ids) <= PER_TASK_FETCH_LIMIT:
        return {tid: client.task(tid) for tid in ids}
    by_id = _newest_pages(client, set(ids))
    missing = [tid for tid in ids if tid not in by_id]
    by_id.update({tid: client.task(tid) for tid in missing})  # raises the master's error
    return {tid: by_id[tid] for tid in ids}


def _newest_pages(client: MasterClient, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Tasks of `wanted` from the listing, newest first, stopping at the oldest id wanted
    (ids are numbers: a master with a million tasks is not read to its beginning)."""
    oldest = min((int(t) for t in wanted if t.isdigit()), default=None)
    found: dict[str, dict[str, Any]] = {}
    offset, limit = 0, min(10_000, max(100, 2 * len(wanted)))
    while True:
        page = client.task_page(limit=limit, offset=offset, order="desc")
        tasks = [t for t in page["tasks"] if isinstance(t, dict)]
        found.update((str(t.get("id")), t) for t in tasks if str(t.get("id")) in wanted)
        offset += len(tasks)
        last = str(tasks[-1].get("id")) if tasks else ""
        if (not tasks or page.get("next") is None or wanted <= found.keys()
                or (oldest is not None and len(wanted) == sum(t.isdigit() for t in wanted)
                    and last.isdigit() and int(last) <= oldest)):
            return found


class Follower:
    """The tasks of `ids` (a `TaskSet` in `view`), kept current; see the module."""

    def __init__(
        self,
        client: MasterClient,
        ids: list[str],
        *,
        use_events: bool = True,
        poll: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.ids, self.poll, self._sleep = client, ids, poll, sleep
        self.lock = threading.Lock()
        self.activity = 0  # grows with every event or fetch: "something may have changed"
        self.feed: EventFeed | None = None
        self.refusal: Refusal | None = None  # why there is no stream (None: events flow)
        self._resubscribe_at: float | None = None
        self._refetch = False
        if use_events:
            self._subscribe()
        else:
            self.refusal = Refusal("events not wanted", transient=False)
        try:
            self._fetched_at = time.monotonic()
            self.view = TaskSet(ids, fetch_tasks(client, ids))  # after subscribing
        except BaseException:
            self.close()
            raise
        self._refetch = False

    @property
    def streaming(self) -> bool:
        return self.feed is not None

    def step(self, timeout: float) -> None:
        """Wait for changes (at most about `timeout` s with events, `poll` s without)."""
        if self.feed is None:
            self._sleep(self.poll)
            if self._resubscribe_at is not None and time.monotonic() >= self._resubscribe_at:
                self._subscribe()
            self._fetch()
            return
        now = time.monotonic()
        if self._refetch:
            timeout = min(timeout, max(0.0, self._fetched_at + MIN_REFETCH - now))
        items = self.feed.next(max(0.0, min(timeout, self._fetched_at + SAFETY_REFETCH - now)))
        with self.lock:
            for item in items:
                if isinstance(item, Event):
                    self.view.apply(item.payload)
                    self.activity += 1
                elif isinstance(item, Reset):
                    self._refetch = True
        gone = items[-1] if items else None
        if isinstance(gone, Gone):
            self.feed.close()
            self.feed = None
            self._refused(Refusal(gone.reason, gone.transient))
            self._fetch()  # what happened since the stream ended
            return
        now = time.monotonic()
        if (self._refetch and now >= self._fetched_at + MIN_REFETCH) or (
            now >= self._fetched_at + SAFETY_REFETCH
        ):
            self._fetch()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None

    # -- plumbing -------------------------------------------------------------------------

    def _subscribe(self) -> None:
        opened = EventFeed.open(self.client)
        if isinstance(opened, Refusal):
            self._refused(opened)
            return
        self.feed, self.refusal, self._resubscribe_at = opened, None, None
        self._refetch = True  # a stream (re)started: the state is fetched after it

    def _refused(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self._resubscribe_at = (
            time.monotonic() + RESUBSCRIBE_EVERY if refusal.transient else None
        )

    def _fetch(self) -> None:
        fresh = fetch_tasks(self.client, self.ids)
        with self.lock:
            self.view.update_all(fresh.values())
            self.activity += 1
        self._fetched_at = time.monotonic()
        self._refetch = False
