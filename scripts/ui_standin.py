"""A stand-in for the master's own dashboard wiring, for `make ui-test` before the master
serves `GET /` and `GET /master/events` itself (issue 14, phase 2).

It is a small aiohttp server in front of a REAL master: `/`, `/dashboard/*` and
`/favicon.ico` come from `master.dashboard.Dashboard`; `/master/events` from a real
`master.events.EventHub`, fed by polling the master's `/master/tasks` and `/master/slaves`
every `interval` seconds and publishing what changed; every other path is proxied to the
master unchanged (method, query, body, the Authorization header; status, body, Content-Type
and X-Log-* headers back). Once the master is wired, ui_test.py talks to it directly and
this module is not used. It runs on its own thread with its own event loop, because the
browser driver is synchronous.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from master.dashboard import Dashboard
from master.events import EventHub

__all__ = ["StandIn"]

_FORWARD_REQUEST = ("Authorization", "Content-Type", "X-Cluster-Secret")
_QUIET_FIELDS = ("progress", "updated_at")  # a change in only these is a progress event


class StandIn:
    def __init__(self, master_url: str, interval: float = 0.25) -> None:
        self.master_url = master_url.rstrip("/")
        self.interval = interval
        self.url = ""
        self.errors: list[str] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="ui-standin", daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(20) or not self.url:
            raise RuntimeError(f"the stand-in did not start: {self.errors}")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # noqa: BLE001 - reported by start()/the test
            self.errors.append(repr(exc))
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hub = EventHub()
        dashboard = Dashboard()
        session = ClientSession(timeout=ClientTimeout(total=15))
        app = web.Application()
        app.add_routes(dashboard.routes())
        app.router.add_get("/master/events", hub.handle)
        app.router.add_route("*", "/{tail:.*}", lambda request: self._proxy(session, request))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        poller = asyncio.ensure_future(self._poll(session, hub))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            poller.cancel()
            hub.close()
            await runner.cleanup()
            await session.close()

    async def _proxy(self, session: ClientSession, request: web.Request) -> web.StreamResponse:
        headers = {k: request.headers[k] for k in _FORWARD_REQUEST if k in request.headers}
        body = await request.read()
        async with session.request(request.method, self.master_url + request.path_qs,
                                   headers=headers, data=body or None) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-log-")}
            return web.Response(body=data, status=resp.status, headers=out,
                                content_type=resp.content_type)

    async def _poll(self, session: ClientSession, hub: EventHub) -> None:
        tasks: dict[str, dict[str, Any]] = {}
        slaves: dict[str, dict[str, Any]] = {}
        while True:
            try:
                async with session.get(self.master_url + "/master/tasks") as r:
                    now_tasks = {str(t["id"]): t for t in (await r.json())["tasks"]}
                async with session.get(self.master_url + "/master/slaves") as r:
                    now_slaves = {str(s["id"]): s for s in (await r.json())["slaves"]}
            except Exception as exc:  # noqa: BLE001 - the master restarting; keep polling
                self.errors.append(repr(exc))
                await asyncio.sleep(self.interval)
                continue
            for tid, t in now_tasks.items():
                old = tasks.get(tid)
                if old is None or _strip(old) != _strip(t):
                    hub.publish_task(t)
                elif old.get("progress") != t.get("progress"):
                    hub.publish_progress(tid, float(t["progress"]), t.get("updated_at"))
            for sid, s in now_slaves.items():
                old = slaves.get(sid)
                if old is None or old.get("state") != s.get("state"):
                    hub.publish_slave(s)
            tasks, slaves = now_tasks, now_slaves
            await asyncio.sleep(self.interval)


def _strip(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k not in _QUIET_FIELDS}
