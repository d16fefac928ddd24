"""A small synchronous client of the master's HTTP API, for the `cluster` client commands.

Why synchronous urllib and not aiohttp: a client command makes a handful of requests and
exits, so start-up time dominates; the stdlib costs nothing to import. Proxies from the
environment are ignored on purpose (a `http_proxy` meant for the internet must not swallow
requests to a master on 127.0.0.1).

Every failure surfaces as `ClusterError` with one sentence fit for the terminal: the CLI
prints `error: <message>` and exits non-zero, never a traceback.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

__all__ = ["DEFAULT_MASTER", "ClusterError", "LogChunk", "MasterClient", "master_base_url"]

DEFAULT_MASTER = "127.0.0.1:5050"


class ClusterError(Exception):
    """A failure to show the user as one line; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def master_base_url(master: str) -> str:
    """`HOST:PORT`, `HOST`, `http://HOST:PORT/` or `master@HOST:PORT` -> `http://HOST:PORT`.

    Raises ClusterError naming the accepted forms when `master` is none of them.
    """
    text = master.strip()
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClusterError(f"--master {master!r} is not HOST:PORT (e.g. 127.0.0.1:5050)")
        text = parsed.netloc
    if "@" in text:
        text = text.split("@", 1)[1]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port = text, "5050"
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ClusterError(f"--master {master!r} is not HOST:PORT (e.g. 127.0.0.1:5050)")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{int(port)}"


@dataclass
class LogChunk:
    data: bytes
    next_offset: int
    eof: bool


class MasterClient:
    """Calls on one master. Every method raises ClusterError on any failure.

    `timeout` bounds each request (connect and read), so no command hangs forever on a
    master that accepts connections but does not answer.
    """

    def __init__(self, master: str, secret: str | None = None, timeout: float = 10.0) -> None:
        self.master = master
        self.base = master_base_url(master)
        self.secret = secret or None
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- the API ----------------------------------------------------------------------------

    def tasks(self, states: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Every task (in `states`, named `name`...), oldest first: the paged listing
        followed to its end."""
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.task_page(limit=10_000, offset=offset, states=states, name=name)
            tasks = page["tasks"]
            out += tasks
            offset += len(tasks)
            if not tasks or page.get("next") is None:
                return out

    def task_page(
        self,
        *,
        limit: int,
        offset: int = 0,
        states: str | None = None,
        name: str | None = None,
        order: str = "asc",
    ) -> dict[str, Any]:
        """One page of `GET /master/tasks`: {"tasks": [...], "total": T, "next": ...}."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset, "order": order}
        if states:
            params["state"] = states
        if name:
            params["name"] = name
        page = self._json("GET", f"/master/tasks?{urllib.parse.urlencode(params)}")
        if not isinstance(page, dict) or not isinstance(page.get("tasks"), list):
            raise ClusterError(f"the master at {self.where} sent a task listing without tasks")
        if not isinstance(page.get("total"), int):  # a master older than the paged listing
            page["total"] = len(page["tasks"])
            page["next"] = None
        return page

    def kill_many(
        self,
        *,
        ids: list[str] | None = None,
        states: list[str] | None = None,
        name: str | None = None,
    ) -> int:
        """`POST /master/tasks/kill` by ids or by a state/name filter; how many it reached."""
        body: dict[str, Any] = {"ids": ids} if ids is not None else {}
        if states:
            body["state"] = states
        if name:
            body["name"] = name
        answer = self._json("POST", "/master/tasks/kill", body)
        return int(answer.get("killed", 0)) if isinstance(answer, dict) else 0

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/master/tasks/{_quote(task_id)}"))

    def slaves(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/master/slaves").get("slaves", []))

    def submit(self, specs: list[dict[str, Any]]) -> list[str]:
        body: Any = specs[0] if len(specs) == 1 else specs
        answer = self._json("POST", "/master/tasks", body)
        return [str(i) for i in answer.get("ids", [])]

    def kill(self, task_id: str) -> dict[str, Any]:
        return dict(self._json("POST", f"/master/tasks/{_quote(task_id)}/kill", {}))

    def logs(self, task_id: str, stream: str, offset: int, limit: int = 65536,
             attempt: int | None = None) -> LogChunk:
        """A chunk of a task's log from `offset`; `attempt`: an earlier one (default: the
        latest)."""
        params: dict[str, Any] = {"stream": stream, "offset": offset, "limit": limit}
        if attempt is not None:
            params["attempt"] = attempt
        query = urllib.parse.urlencode(params)
        status, headers, body = self._request(
            "GET", f"/master/tasks/{_quote(task_id)}/logs?{query}"
        )
        if status >= 400:
            raise self.http_error(status, body)
        try:
            next_offset = int(headers.get("X-Log-Offset", offset + len(body)))
        except ValueError:
            next_offset = offset + len(body)
        return LogChunk(body, next_offset, headers.get("X-Log-Eof", "0") == "1")

    def vars(self) -> str:
        status, _, body = self._request("GET", "/master/vars")
        if status >= 400:
            raise self.http_error(status, body)
        return body.decode("utf-8", "replace")

    # -- plumbing -------------------------------------------------------------------------

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        status, _, body = self._request(method, path, data)
        if status >= 400:
            raise self.http_error(status, body)
        try:
            value = json.loads(body)
        except ValueError:
            raise ClusterError(
                f"the master at {self.where} sent a response that is not JSON "
                f"(HTTP {status}, {len(body)} bytes); is {self.where} really a cluster master?"
            ) from None
        if not isinstance(value, (dict, list)):
            raise ClusterError(f"the master at {self.where} sent unexpected JSON: {body[:80]!r}")
        return value

    @property
    def where(self) -> str:
        return self.base[len("http://") :]

    def _request(
        self, method: str, path: str, data: bytes | None = None
    ) -> tuple[int, Message, bytes]:
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.secret:
            request.add_header("Authorization", f"Bearer {self.secret}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except OSError:
                body = b""
            return exc.code, exc.headers, body
        except urllib.error.URLError as exc:
            raise self.unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, reason: object) -> ClusterError:
        hint = (
            "start one with 'cluster up', or point --master / CLUSTER_MASTER at the running master"
        )
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            return ClusterError(
                f"the master at {self.where} did not answer within "
                f"{self.timeout:g}s; is it overloaded or stuck?"
            )
        elif isinstance(reason, socket.gaierror):
            why = "unknown host"
        elif isinstance(reason, http.client.RemoteDisconnected):
            why = "it closed the connection without answering"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        else:
            why = str(reason) or type(reason).__name__
        return ClusterError(f"cannot reach the master at {self.where} ({why}); {hint}")

    def http_error(self, status: int, body: bytes) -> ClusterError:
        message = ""
        try:
            value = json.loads(body)
            if isinstance(value, dict) and isinstance(value.get("error"), str):
                message = value["error"]
        except ValueError:
            pass
        if not message:
            text = body.decode("utf-8", "replace").strip().splitlines()
            message = f"the master answered HTTP {status}" + (f": {text[0][:200]}" if text else "")
        if status == 401 and "secret" not in message.lower():
            message += " (set --secret or CLUSTER_SECRET)"
        return ClusterError(message, status)


def _quote(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")
