"""HTTP endpoints of processes, served by aiohttp on the runtime's one port.

`/<id><path>` reaches the route a process installed with `route(path, handler)`; the handler
runs inside the process's mailbox, serially with its messages. A path whose first segment is
not a live process goes to the delegate process when one is set (so `/vars` can reach
`/master/vars`). Built in: `/__processes__`, `/metrics/snapshot`, `/metrics` (the same
figures and every collector of `libproc.prometheus`, in Prometheus's text format), `/health`.
Every HTTP
request (not the libprocess messages) first passes the rules of `libproc.firewall`.

A request for a process that is terminating is answered 503 with `Retry-After: 1` (a
process of the same id may replace it in a moment); once it is gone, 404 — except while
`libproc.stop()` runs, when every request no running process takes is answered 503 with
`Retry-After: 1` (the whole server is going: the client may ask again, elsewhere).

`/health` answers 200 `{"healthy": true, ...}`, or 503 with `"healthy": false` and the
`reason` once any check registered with `add_health_check` reports a problem (a process
whose database is gone, say): libproc knows nothing of what is checked.

A libprocess message that arrives on a connection aiohttp is already serving (a client that
first sent a GET) is delivered here too, on a slower path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from libproc import firewall, prometheus, wire
from libproc.errors import FutureDiscardedError
from libproc.future import Future
from libproc.metrics import metrics
from libproc.process import HTTP

__all__ = ["HttpServer", "json_error", "add_health_check", "remove_health_check"]

log = logging.getLogger("libproc.http")

HealthCheck = Callable[[], "str | None"]
_health_checks: dict[str, HealthCheck] = {}


def add_health_check(name: str, check: HealthCheck) -> None:
    """Make `/health` ask `check()`: None while healthy, else the reason (one sentence).

    It runs on the event loop's thread at every `/health` request, outside any process's
    mailbox: keep it cheap, non-blocking and read-only. One that raises counts as
    unhealthy. A check of the same `name` is replaced; `remove_health_check` drops it, and
    `libproc.stop()` drops them all.
    """
    _health_checks[name] = check


def remove_health_check(name: str) -> None:
    """Forget the check `name` (nothing happens if there is none)."""
    _health_checks.pop(name, None)


def _health(processes: int) -> web.Response:
    failing: dict[str, str] = {}
    names = list(_health_checks)
    for name in names:
        check = _health_checks.get(name)
        try:
            reason = check() if check is not None else None
        except Exception as exc:  # noqa: BLE001 - a broken check is a finding, not a 500
            reason = f"health check raised {exc!r}"
        if reason:
            failing[name] = reason
    body: dict[str, Any] = {"healthy": not failing, "processes": processes,
                            "checks": {n: failing.get(n, "ok") for n in names}}
    if failing:
        body["reason"] = "; ".join(f"{n}: {r}" for n, r in failing.items())
    return web.json_response(body, status=503 if failing else 200)


def json_error(status: int, message: str) -> web.Response:
    """The error shape of every JSON API here: `{"error": "..."}`."""
    return web.json_response({"error": message}, status=status)


def to_response(result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=200)
    if isinstance(result, str):
        return web.Response(text=result, content_type="text/plain")
    if isinstance(result, (bytes, bytearray)):
        return web.Response(body=bytes(result), content_type="application/octet-stream")
    return web.Response(text=json.dumps(result), content_type="application/json")


class HttpServer:
    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.server = web.Server(self.handle)

    def protocol_factory(self) -> Any:
        return self.server

    async def close(self) -> None:
        _health_checks.clear()  # they belong to the processes of this runtime
        prometheus.clear()
        try:
            await asyncio.wait_for(self.server.shutdown(1.0), 2.0)
        except (TimeoutError, Exception):  # noqa: BLE001 - best effort at shutdown
            pass

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = request.headers.get(wire.REFUSAL_HEADER)
        if refused is not None:  # only the transport sends it (it strips peers' copies)
            return self._refused(request, refused)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.method == "POST" and (
            "libprocess-from" in headers
            or headers.get("user-agent", "").startswith("libprocess/")
        ):
            return await self._message(request, headers)
        path = request.raw_path.split("?", 1)[0]
        if not path.startswith("/"):
            return json_error(400, "path must start with '/'")
        slash = path.find("/", 1)
        first = path[1:] if slash < 0 else path[1:slash]
        rest = "/" if slash < 0 else path[slash:]
        builtin = self._builtin(first, rest)
        if builtin is not None:
            return firewall.check(request, unquote(path), None) or builtin
        proc = self.rt.processes.get(unquote(first))
        delegated = proc is None and self.rt.delegate is not None
        if delegated:
            proc = self.rt.processes.get(self.rt.delegate)
            rest = path
        # As routed: with the delegate's id in front when the request goes to the delegate.
        routed = f"/{self.rt.delegate}{path}" if delegated else path
        found = proc._find_route(rest) if proc is not None else None
        endpoint = f"/{proc.id}{found[0]}" if proc is not None and found is not None else None
        refusal = firewall.check(request, unquote(routed), endpoint)
        if refusal is not None:
            return refusal
        if self.rt.stopping and (proc is None or proc._state != "running"):
            return web.json_response(
                {"error": "this server is shutting down; retry in a moment"},
                status=503, headers={"Retry-After": "1"})
        if proc is not None and proc._state == "terminating":
            # Like the requests already in its mailbox (DISCARDED: 503), and maybe replaced
            # by a process of the same id in a moment: not a 404's "no such thing".
            return web.json_response(
                {"error": f"process {proc.id!r} is terminating; retry in a moment"},
                status=503, headers={"Retry-After": "1"})
        if proc is None or proc._state == "terminated":
            return json_error(404, f"no process serves {path!r}")
        if found is None:
            return json_error(404, f"process {proc.id!r} has no endpoint {rest!r}")
        handler = found[1]
        served: Future[Any] = Future(False)
        proc._enqueue((HTTP, handler, request, served))
        try:
            result = await served
            if isinstance(result, Future):
                result = await result
        except FutureDiscardedError:  # the process terminated before it served the request
            return json_error(503, f"process {proc.id!r} terminated before serving {rest!r}")
        except web.HTTPError as exc:  # e.g. aiohttp's 413 from read() past client_max_size
            return json_error(exc.status, exc.text or exc.reason)
        except web.HTTPException:  # a redirect or success raised by the route: aiohttp's
            raise
        except Exception as exc:  # a route that raised: 500 with the reason, actor lives on
            metrics.inc("libproc/http_handler_errors")
            log.error("%s %s raised", proc.id, rest, exc_info=exc)
            return json_error(500, f"internal error in {proc.id}{rest}: {exc}")
        return to_response(result)

    async def _message(self, request: web.BaseRequest, headers: dict[str, str]) -> web.Response:
        # Not request.read(): its 1 MiB cap is the HTTP path's, a message may have max_body.
        # aiohttp has already undone any Content-Encoding: do not decode the body twice.
        max_body = self.rt.transport.limits.max_body
        received = bytearray()
        while chunk := await request.content.readany():
            received += chunk
            if len(received) > max_body:  # a compressed body that grows past the cap
                metrics.inc("libproc/messages_rejected")
                return web.Response(status=400)
        body = bytes(received)
        headers.pop("content-encoding", None)
        req = wire.Request(request.method, request.raw_path, "HTTP/1.1", headers, body)
        result = wire.classify(req, self.rt.transport.limits)
        if isinstance(result, wire.Message):
            return web.Response(status=self.rt._deliver_remote(result))
        metrics.inc("libproc/messages_rejected")
        return web.Response(status=result.status)

    @staticmethod
    def _refused(request: web.BaseRequest, value: str) -> web.StreamResponse:
        """Answer a request the transport refused (its framing was bad), then close.

        Status 0: bytes that were not HTTP; close without an answer (DESIGN.md §2.1)."""
        status_text, _, reason = value.partition(" ")
        status = int(status_text) if status_text.isdigit() else 0
        if not 400 <= status < 600:
            if request.transport is not None:
                request.transport.close()  # after the answers already written
            return web.Response(status=400)  # never written: the transport is closing
        response = json_error(status, unquote(reason) or "bad request")
        response.force_close()
        return response

    def _builtin(self, first: str, rest: str) -> web.Response | None:
        if first == "__processes__":
            return web.json_response([
                {"id": p.id, "pid": str(p.pid), "state": p.state,
                 "events": p._describe_events()}
                for p in list(self.rt.processes.values())
            ])
        if first == "metrics" and "metrics" not in self.rt.processes:
            if rest == "/snapshot":
                return web.json_response(self._snapshot())
            if rest == "/":  # GET /metrics: for Prometheus
                return prometheus.response(self._snapshot(), metrics.counters)
        if first == "health" and rest == "/" and "health" not in self.rt.processes:
            return _health(len(self.rt.processes))
        return None

    def _snapshot(self) -> dict[str, Any]:
        """libproc's counters and gauges, with the runtime's own gauges."""
        snap: dict[str, Any] = metrics.snapshot()
        snap["libproc/processes"] = len(self.rt.processes)
        for key, value in self.rt.transport.stats().items():
            snap[f"libproc/connections_{key}"] = value
        return snap
