"""A test server for the CLI's use of `GET /master/events` (no tests here).

`EventFront` is a real aiohttp server on 127.0.0.1 (a free port), on a thread of its own:
`/master/events` is served by a real `master.events.EventHub` (or answered 404 / 503, or
with raw bytes, to test the CLI's fallbacks and its defences), and every request is
counted, so a test can say how many requests a `cluster` command made.

Two ways to use it:
- In front of a REAL master (`EventFront(master="127.0.0.1:PORT")`): every other request is
  proxied to it, and the hub is fed by looking at the master's tasks and slaves every
  `feed_interval` seconds and publishing what changed — what the master's own wiring of the
  hub will publish, so the CLI can be tested on the event path before the master serves it.
  The front's own looks are not counted.
- Alone (no master): it answers the few task endpoints the CLI reads (`/master/tasks`,
  `/master/tasks/<id>`, its `/logs`, `/master/slaves`) from `tasks`, `logs` and `slaves`,
  which a test changes through `call()` — a scripted master, for the cases a real one cannot
  be made to produce on demand (a reset, a new boot, a stream that breaks, garbage).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import ClientSession, ClientTimeout, web

from master.events import EventHub, HubLimits

__all__ = ["EventFront"]

T = TypeVar("T")
_PASSED_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "Accept")
_QUIET = frozenset({"progress", "updated_at"})  # a change in only these is a progress event


class EventFront:
    """See the module. `events`: "on" (the hub), "absent" (404, as a master without the
    stream), "full" (503), "plain" (200 JSON, not a stream), "proxy" (passed on to the
    master too), "raw" (`raw` bytes, then held open until `drop_streams()`)."""

    def __init__(self, master: str | None = None, *, events: str = "on",
                 feed_interval: float = 0.1, limits: HubLimits | None = None) -> None:
        self.master_url = f"http://{master}" if master else None
        self.events = events
        self.feed_interval = feed_interval
        self.limits = limits or HubLimits(keepalive=15.0)
        self.requests: list[tuple[str, str]] = []  # (method, path with query), in order
        self.resumed_from: list[str | None] = []  # Last-Event-ID of each event request
        self.tasks: dict[str, dict[str, Any]] = {}
        self.slaves: list[dict[str, Any]] = []
        self.logs: dict[str, tuple[bytes, bool]] = {}  # task id -> (log, eof)
        self.raw: list[bytes] = []
        self.hub = EventHub(self.limits, boot="front1")
        self.address = ""
        self._boots = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="event-front", daemon=True)

    # -- the test's side ------------------------------------------------------------------

    def __enter__(self) -> EventFront:
        self._thread.start()
        if not self._ready.wait(20) or not self.address:
            raise RuntimeError(f"the event front did not start: {self._errors}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the front's loop (where the hub lives) and return its value."""
        assert self._loop is not None

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def set_task(self, task: dict[str, Any], publish: bool = True) -> None:
        """Change a scripted task (and publish it as a `task` event unless told not to)."""
        def change() -> None:
            self.tasks[str(task["id"])] = dict(task)
            if publish:
                self.hub.publish_task(dict(task))
        self.call(change)

    def drop_streams(self) -> None:
        """End every open event stream (the CLI should reconnect with Last-Event-ID)."""
        def drop() -> None:
            self.hub.close()
            if self._release is not None:
                self._release.set()
                self._release = asyncio.Event()
        self.call(drop)

    def new_boot(self) -> None:
        """As a master restart: a new hub (another boot), the old streams ended."""
        def swap() -> None:
            self.hub.close()
            self._boots += 1
            self.hub = EventHub(self.limits, boot=f"front{self._boots}")
        self.call(swap)

    def count(self, method: str, prefix: str, exact: bool = False) -> int:
        return sum(1 for m, p in list(self.requests)
                   if m == method and (p.split("?")[0] == prefix if exact else
                                       p.startswith(prefix)))

    def summary(self) -> Counter[str]:
        """Requests by kind: `GET /master/tasks/<id>` and its logs are grouped."""
        kinds: Counter[str] = Counter()
        for method, path in list(self.requests):
            bare = path.split("?")[0]
            parts = bare.strip("/").split("/")
            if len(parts) >= 3 and parts[:2] == ["master", "tasks"] and parts[2] != "kill":
                bare = "/master/tasks/<id>" + ("/logs" if parts[3:] == ["logs"] else "")
            kinds[f"{method} {bare}"] += 1
        return kinds

    # -- the server ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self._errors.append(exc)
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop, self._release = asyncio.Event(), asyncio.Event()
        session = ClientSession(timeout=ClientTimeout(total=30))
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(session, request)

        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{runner.addresses[0][1]}"
        feeder = asyncio.ensure_future(self._feed(session)) if self.master_url else None
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            if feeder is not None:
                feeder.cancel()
            self.hub.close()
            self._release.set()
            await runner.cleanup()
            await session.close()

    async def _handle(self, session: ClientSession, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.path == "/master/events" and self.events != "proxy":
            self.resumed_from.append(request.headers.get("Last-Event-ID"))
            return await self._events(request)
        if self.master_url is not None:
            return await self._proxy(session, request)
        return self._scripted(request)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self.events == "absent":
            return web.json_response({"error": "no endpoint GET /master/events"}, status=404)
        if self.events == "plain":
            return web.json_response({"events": []})
        if self.events == "full":
            return web.json_response({"error": "too many event stream subscribers"},
                                     status=503, headers={"Retry-After": "5"})
        if self.events == "raw":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            release = self._release
            for chunk in self.raw:
                await resp.write(chunk)
            assert release is not None
            await release.wait()
            return resp
        return await self.hub.handle(request)

    async def _proxy(self, session: ClientSession, request: web.Request) -> web.Response:
        assert self.master_url is not None
        headers = {k: request.headers[k] for k in _PASSED_HEADERS if k in request.headers}
        body = await request.read()
        async with session.request(request.method, self.master_url + request.path_qs,
                                   headers=headers, data=body or None) as resp:
            data = await resp.read()
            passed = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-log-")}
            return web.Response(body=data, status=resp.status, headers=passed,
                                content_type=resp.content_type)

    def _scripted(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and parts == ["master", "tasks"]:
            return web.json_response({"tasks": list(self.tasks.values())})
        if request.method == "GET" and parts == ["master", "slaves"]:
            return web.json_response({"slaves": self.slaves})
        if request.method == "GET" and len(parts) >= 3 and parts[:2] == ["master", "tasks"]:
            task = self.tasks.get(parts[2])
            if task is None:
                return web.json_response({"error": f"no task with id '{parts[2]}'"}, status=404)
            if len(parts) == 3:
                return web.json_response(task)
            if parts[3:] == ["logs"] and parts[2] in self.logs:
                log, eof = self.logs[parts[2]]
                offset = int(request.query.get("offset", "0"))
                data = log[offset:offset + int(request.query.get("limit", "65536"))]
                ended = eof and offset + len(data) >= len(log)
                return web.Response(body=data, headers={
                    "X-Log-Offset": str(offset + len(data)), "X-Log-Eof": "1" if ended else "0"})
            return web.json_response({"error": f"task {parts[2]} has no slave to read logs "
                                      "from"}, status=404)
        return web.json_response({"error": f"no endpoint {request.method} {request.path}"},
                                 status=404)

    async def _feed(self, session: ClientSession) -> None:
        """Publish what changed on the real master, as its own wiring of the hub would."""
        assert self.master_url is not None
        seen_tasks: dict[str, dict[str, Any]] = {}
        seen_slaves: dict[str, str] = {}
        while True:
            try:
                async with session.get(self.master_url + "/master/tasks") as r:
                    tasks = json.loads(await r.read())["tasks"]
                async with session.get(self.master_url + "/master/slaves") as r:
                    slaves = json.loads(await r.read())["slaves"]
            except Exception:  # noqa: BLE001 - the master restarting: look again
                await asyncio.sleep(self.feed_interval)
                continue
            for task in tasks:
                before = seen_tasks.get(task["id"])
                seen_tasks[task["id"]] = task
                if before is None or any(task.get(k) != before.get(k)
                                         for k in task.keys() - _QUIET):
                    self.hub.publish_task(task)
                elif before.get("progress") != task.get("progress"):
                    self.hub.publish_progress(task["id"], task["progress"], task["updated_at"])
            for slave in slaves:
                if seen_slaves.get(slave["id"]) != slave["state"]:
                    seen_slaves[slave["id"]] = slave["state"]
                    self.hub.publish_slave(slave)
            await asyncio.sleep(self.feed_interval)
