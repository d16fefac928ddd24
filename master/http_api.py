"""The master's HTTP endpoints, on aiohttp's router.

    GET  /master/vars (also /vars)   GET /master/state   GET /master/slaves
    GET  /master/tasks  (paged)      POST /master/tasks                (submit)
    POST /master/tasks/kill  (bulk)  (GET /metrics is libproc's, with master/metrics.py's)
    GET  /master/tasks/{id}          POST /master/tasks/{id}/kill
    GET  /master/tasks/{id}/logs     GET  /master/events               (Server-Sent Events)
    GET  /  /dashboard/{name}  /favicon.ico                            (the web dashboard)

`MasterHttp.handle` is the master's one libproc route (and, through the runtime's delegate,
what answers paths outside `/master`). It runs in the master's mailbox only long enough to
start serving: matching (aiohttp's `UrlDispatcher`), then each endpoint runs outside the
mailbox and reads or changes the master's state with `dispatch`, so a slow client, a
database write or a slave's log never holds up the actor. Contract:

- Every problem is a JSON `{"error": …}`: 404 for an unknown path, 405 (with `Allow`) for a
  method the path does not take, 401 for a write without the secret (when the master has
  one), 403 for a write a browser sends from another site (`Origin` or `Sec-Fetch-Site`),
  and the endpoints' own 4xx for bad input. Never a 500 for user input.
- Writes (`POST`) need the secret as `Authorization: Bearer …` or `X-Cluster-Secret`,
  compared in constant time; reads are open.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from aiohttp import web

import libproc
from libproc.future import Future, as_future
from master.api import shown
from master.dashboard import Dashboard
from master.task_http import TaskHttp, error

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["Endpoint", "MasterHttp"]

log = logging.getLogger("master")

Endpoint = Callable[[web.BaseRequest, Mapping[str, str]], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MasterHttp:
    """The endpoints of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.tasks = TaskHttp(master)
        self.dashboard = Dashboard()
        self.router = web.UrlDispatcher()
        routes: Sequence[tuple[str, str, Endpoint]] = [
            ("GET", "/master/vars", self._vars), ("GET", "/vars", self._vars),
            ("GET", "/master/state", self._state),
            ("GET", "/master/slaves", self._slaves),
            ("GET", "/master/tasks", self.tasks.list_tasks),
            ("POST", "/master/tasks", self.tasks.submit_http),
            ("POST", "/master/tasks/kill", self.tasks.kill_many),
            ("GET", "/master/tasks/{id}", self.tasks.get_task),
            ("POST", "/master/tasks/{id}/kill", self.tasks.kill_task),
            ("GET", "/master/tasks/{id}/logs", self.tasks.task_logs),
            ("GET", "/master/events", self._events),
            *[("GET", path, self._dashboard)
              for path in ("/", "/index.html", "/favicon.ico", "/dashboard/{name}")],
        ]
        for method, path, endpoint in routes:
            # The router only matches (our endpoints also take the match): see `_serve`.
            handler = cast("Handler", endpoint)
            if method == "GET":
                self.router.add_get(path, handler)
            else:
                self.router.add_route(method, path, handler)
        self.router.freeze()

    # -- in the mailbox ----------------------------------------------------------------

    def handle(self, request: web.BaseRequest) -> Future[Any]:
        """The libproc route: serve `request` outside the mailbox."""
        return as_future(self._serve(request))

    # -- outside the mailbox -----------------------------------------------------------

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        match = await self.router.resolve(request)  # type: ignore[arg-type]
        problem = match.http_exception
        if problem is not None:
            if isinstance(problem, web.HTTPMethodNotAllowed):
                allowed = ", ".join(sorted(problem.allowed_methods))
                return web.json_response(
                    {"error": f"{request.method} is not allowed on "
                              f"{shown(request.path, 80)}; use {allowed}"},
                    status=405, headers={"Allow": allowed})
            return error(404, f"no endpoint {request.method} {shown(request.path, 80)}; see "
                         "/master/state, /master/tasks, /master/slaves, /master/vars, or the "
                         "dashboard at /")
        if request.method not in ("GET", "HEAD"):
            refused = self._refuse_write(request)
            if refused is not None:
                return refused
        endpoint: Endpoint = match.handler  # type: ignore[assignment]
        return await endpoint(request, match)

    def _refuse_write(self, request: web.BaseRequest) -> web.Response | None:
        if _cross_site(request):
            log.warning("refused %s %s from %s: sent by a page of another site",
                        request.method, shown(request.path, 80), request.remote)
            return error(403, "cross-site request refused: this API takes writes from "
                         "clients and from the dashboard of this master only")
        if not self.authorized(request):
            log.warning("refused %s %s from %s: wrong or missing secret", request.method,
                        shown(request.path, 80), request.remote)
            return error(401, "wrong or missing secret (set CLUSTER_SECRET)")
        return None

    def authorized(self, request: web.BaseRequest) -> bool:
        """The API secret, when set, as `Authorization: Bearer …` or `X-Cluster-Secret`;
        compared in constant time (on bytes: headers may carry any byte)."""
        secret = self.master.config.secret
        if secret is None:
            return True
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.headers.get(
            "X-Cluster-Secret", "")
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                   secret.encode("utf-8", "surrogateescape"))

    async def _vars(self, request: web.BaseRequest, _: Mapping[str, str]) -> web.Response:
        text: str = await libproc.dispatch(self.master.pid, self.master.vars_text)
        return web.Response(text=text, content_type="text/plain")

    async def _state(self, request: web.BaseRequest, _: Mapping[str, str]) -> web.Response:
        return web.json_response(await libproc.dispatch(self.master.pid,
                                                        self.master.state_json))

    async def _slaves(self, request: web.BaseRequest, _: Mapping[str, str]) -> web.Response:
        return web.json_response({"slaves": await libproc.dispatch(
            self.master.pid, self.master.slaves_json)})

    async def _events(self, request: web.BaseRequest,
                      _: Mapping[str, str]) -> web.StreamResponse:
        return await self.master.events.handle(request)

    async def _dashboard(self, request: web.BaseRequest,
                         _: Mapping[str, str]) -> web.StreamResponse:
        page = self.dashboard.serve(request)
        return page if page is not None else error(404, "no such dashboard page")


def _cross_site(request: web.BaseRequest) -> bool:
    """A browser's write from a page of another origin (the API has no CORS: refuse it)."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser (curl, the CLI), or a same-origin GET-style request
    if origin == "null":
        return True
    host = request.headers.get("Host", "")
    return urlsplit(origin).netloc != host
