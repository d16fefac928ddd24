"""A small synchronous client of the master's HTTP API, for the `cluster` client commands.

Why synchronous urllib and not aiohttp: a client command makes a handful of requests and
exits, so start-up time dominates; the stdlib costs nothing to import. Proxies from the
environment are ignored on purpose (a `http_proxy` meant for the internet must not swallow
requests to a master on 127.0.0.1).

Every failure surfaces as `ClusterError` with one sentence fit for the terminal: the CLI
prints `error: <message>` and exits non-zero, never a traceback.

Several masters (`cluster master --zk`): `--master zk://HOST:PORT[,...]/PATH` finds the
leader in ZooKeeper (`protos.detector.find_leader`, imported only then) and follows it. A
standby's `307` is followed with the same method, body and secret (the secret goes where
the master we were given sends us: it could hand it on anyway), at most `MAX_REDIRECTS`
hops. Under `zk://`, for up to `follow_wait` seconds a request is sent again to the leader
ZooKeeper names when the master it reached cannot have acted on it — the connection was
refused, or a master answered that it does not lead or is between roles (a `503` naming
`leader`, or with `Retry-After`) — and, for
reads only, when the connection broke mid-request. A write whose connection broke after
it was sent is not repeated (it may have been done): that error is the user's to see.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

__all__ = [
    "DEFAULT_MASTER",
    "FOLLOW_WAIT",
    "MAX_REDIRECTS",
    "ClusterError",
    "LogChunk",
    "MasterClient",
    "master_base_url",
]

DEFAULT_MASTER = "127.0.0.1:5050"
MAX_REDIRECTS = 5
# How long a request under --master zk://... keeps looking for a leader: a failover takes
# ZooKeeper's session timeout (5 s by default) plus the new leader's recovery.
FOLLOW_WAIT = 30.0
# Connection errors that mean the request never reached anyone, so repeating it is safe.
_NOT_SENT = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                       errno.EADDRNOTAVAIL})


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

    def __init__(
        self,
        master: str,
        secret: str | None = None,
        timeout: float = 10.0,
        follow_wait: float = FOLLOW_WAIT,
    ) -> None:
        self.master = master
        # (not protos.zookeeper.is_zk_url: importing it imports kazoo, slow for a CLI)
        self.zk = master.strip() if master.strip().lower().startswith("zk://") else None
        self._base = None if self.zk else master_base_url(master)
        if self.zk:  # a URL that cannot work fails now, not after `follow_wait` of retries
            from protos.zookeeper import parse_zk_url

            try:
                parse_zk_url(self.zk)
            except ValueError as exc:  # ZkUrlError: says what is wrong and shows a good one
                raise ClusterError(f"--master: {exc}") from None
        self.secret = secret or None
        self.timeout = timeout
        self.follow_wait = follow_wait
        self._zk_answered = False  # has ZooKeeper ever answered this client?
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _NoRedirects()
        )

    @property
    def base(self) -> str:
        """`http://HOST:PORT` of the master to ask: the given one, or the leader ZooKeeper
        names (looked up on first use, and again after the leader seemed to change)."""
        if self._base is None:
            self._base = self._find_leader()
        return self._base

    def forget_leader(self) -> None:
        """Under zk://: the leader may have changed; look it up again on the next use."""
        if self.zk:
            self._base = None

    def _find_leader(self) -> str:
        """The leader's base URL from ZooKeeper. ClusterError when there is none; a
        ZooKeeper that never answered this client is not waited for (a wrong --master)."""
        assert self.zk is not None
        from protos.detector import DetectionError, ZooKeeperUnreachable, find_leader

        try:
            leader = find_leader(self.zk, timeout=min(self.timeout, 10.0))
        except ZooKeeperUnreachable as exc:
            kind = ClusterError if self._zk_answered else _GiveUp
            raise kind(f"cannot find the leading master: {exc}") from None
        except DetectionError as exc:
            raise ClusterError(f"cannot find the leading master: {exc}") from None
        self._zk_answered = True
        return master_base_url(leader.http)

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
        """The master asked, for messages: HOST:PORT, or the zk:// URL before a lookup."""
        return self._base[len("http://") :] if self._base else self.master

    def _request(
        self, method: str, path: str, data: bytes | None = None
    ) -> tuple[int, Message, bytes]:
        """One call, following standbys' redirects and, under zk://, the leader (see the
        module docstring); the final answer of any status."""
        deadline = time.monotonic() + self.follow_wait if self.zk else None
        url: str | None = None  # where a redirect sent us, else base + path
        hops = 0
        pause = 0.1
        while True:
            retry = False
            try:
                target = url or self.base + path
                status, headers, body = self._send(method, target, data)
            except _Unreachable as exc:
                where = urllib.parse.urlsplit(url).netloc if url else None
                if deadline is None or not (exc.not_sent or method in ("GET", "HEAD")):
                    raise self.unreachable(exc.reason, where) from None
                retry, last = True, self.unreachable(exc.reason, where)
            except _GiveUp:
                raise
            except ClusterError as exc:  # no leader in ZooKeeper (yet)
                if deadline is None:
                    raise
                retry, last = True, exc
            if retry:
                if time.monotonic() + pause > deadline:  # type: ignore[operator]
                    raise last
                self.forget_leader()  # ask ZooKeeper again
                url = None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            if status in (307, 308):
                hops += 1
                url = self._redirect(target, headers.get("Location"), hops)
                self.forget_leader()  # the leader we were told of no longer leads
                continue
            if (deadline is not None and status == 503 and _retry_soon(headers, body)
                    and time.monotonic() + pause < deadline):
                self.forget_leader()
                url = None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            return status, headers, body

    def _redirect(self, target: str, location: str | None, hops: int) -> str:
        """Where a 307/308 from `target` sends us, checked."""
        shown = urllib.parse.urlsplit(target).netloc
        if not location:
            raise ClusterError(f"the master at {shown} redirected without saying where to")
        url = urllib.parse.urljoin(target, location)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ClusterError(f"the master at {shown} redirected to {location[:200]!r}, "
                               "which is not an http URL")
        if hops > MAX_REDIRECTS:
            raise ClusterError(
                f"redirected more than {MAX_REDIRECTS} times (last by {shown}): the masters "
                "disagree about who leads; retry in a moment, or use --master zk://..."
            )
        return url

    def _send(self, method: str, url: str, data: bytes | None) -> tuple[int, Message, bytes]:
        request = urllib.request.Request(url, data=data, method=method)
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
            raise _Unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(exc) from None

    def unreachable(self, reason: object, where: str | None = None) -> ClusterError:
        """`reason` (why a request got no answer) as one line naming the master asked:
        `where` (HOST:PORT, e.g. where a redirect sent us), else this client's."""
        where = where or self.where
        hint = (
            "start one with 'cluster up', or point --master / CLUSTER_MASTER at the running master"
        )
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            return ClusterError(
                f"the master at {where} did not answer within "
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
        return ClusterError(f"cannot reach the master at {where} ({why}); {hint}")

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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as answers: `_request` follows them itself, POSTs included."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _GiveUp(ClusterError):
    """A ClusterError that waiting cannot mend: `_request` reports it without retrying."""


class _Unreachable(Exception):
    """No answer; `not_sent` when the request surely reached nobody (safe to repeat)."""

    def __init__(self, reason: object) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.not_sent = isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
            isinstance(reason, OSError) and reason.errno in _NOT_SENT
        )


def _retry_soon(headers: Message, body: bytes) -> bool:
    """A 503 that says nothing was done and to ask again: a master that does not lead
    (naming the `leader`, or null), or one between roles (`Retry-After`). A 503 for a
    database fault is the user's to see at once."""
    if headers.get("Retry-After"):
        return True
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and "leader" in value
