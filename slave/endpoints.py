"""The slave's HTTP endpoints: `/slave(N)/vars`, `/tasks`, `/monitor` and `/logs`.

`Endpoints(slave)` is a helper object owned by the `Slave` actor; its handlers are libproc
routes, so they run inside the actor's mailbox, serially with its messages, and only read
its state. Every bad parameter is a 400 JSON `{"error": ...}` naming it, never a 500.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from slave.registration import VERSION

if TYPE_CHECKING:
    from slave.process import Slave

__all__ = ["Endpoints"]


class Endpoints:
    """The HTTP routes of one slave (see the module docstring)."""

    def __init__(self, slave: Slave) -> None:
        self.slave = slave

    def install(self) -> None:
        """Route them on the slave (in its initialize)."""
        s = self.slave
        s.route("/vars", self._vars)
        s.route("/logs", self._logs)
        s.route("/tasks", self._tasks_json)
        s.route("/monitor", self._monitor)

    def _vars(self, request: web.BaseRequest) -> web.Response:
        s = self.slave
        assert s.executor is not None
        lines = [("version", VERSION), ("pid", str(s.pid)),
                 ("slave_id", s.slave_id or "-"), ("mode", s.mode),
                 ("master", str(s.config.master)),
                 ("uptime_secs", f"{time.time() - s._started:.3f}"),
                 ("cpus", f"{s.config.cpus:g}"), ("mem", f"{s.config.mem:g}"),
                 ("unacked_updates", str(len(s.unacked)))]
        lines += [(k, str(v)) for k, v in s._counters.items()]
        lines += [(k, str(v)) for k, v in s.executor.counters().items()]
        lines += list(s.executor.isolator.describe().items())
        if s.gc is not None:
            lines += s.gc.vars()
        return web.Response(text="".join(f"{k} {v}\n" for k, v in lines),
                            content_type="text/plain")

    def _tasks_json(self, request: web.BaseRequest) -> web.Response:
        s = self.slave
        assert s.executor is not None
        progress = s.executor.progress()
        return web.json_response({"tasks": [
            {"id": tid, "name": info.name, "attempt": info.attempt,
             "progress": progress.get(tid, 0.0)} for tid, info in s.tasks.items()]})

    def _monitor(self, request: web.BaseRequest) -> web.Response:
        """Each running task's limits and last sampled usage (as Mesos's /monitor/statistics)."""
        s = self.slave
        assert s.executor is not None
        return web.json_response({"isolation": s.executor.isolator.describe(),
                                  "tasks": s.executor.monitor()})

    def _logs(self, request: web.BaseRequest) -> web.Response:
        """`?task_id=&attempt=&stream=&offset=&limit=`: a log's bytes from `offset`, with
        `X-Log-Offset` (where to read next) and `X-Log-Eof`. Any bad parameter is a 400
        saying which; a log whose sandbox the garbage collector removed is a 410 saying
        when and why; one that is not here (or cannot be opened) is a 404."""
        s = self.slave
        assert s.executor is not None
        q = request.query

        def number(key: str, default: int, high: int) -> int:
            value = q.get(key)
            if value is None:
                return default
            if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(
                    value) > high:
                raise ValueError(f"{key!r} must be a whole number from 0 to {high}, got "
                                 f"{value[:30]!r}")
            return int(value)

        task_id = q.get("task_id", "")
        stream = q.get("stream", "stdout")
        try:
            if not task_id or len(task_id) > 255 or not task_id.isprintable():
                raise ValueError(f"'task_id' must be a task id (1 to 255 printable "
                                 f"characters), got {task_id[:30]!r}")
            attempt = number("attempt", 1, 10**14 - 1)
            offset = number("offset", 0, 2**63 - 1)
            limit = number("limit", 65536, 2**31 - 1)
            data, new_offset, eof = s.executor.read_log(task_id, attempt, stream,  # type: ignore[arg-type]
                                                        offset, limit)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except FileNotFoundError as exc:
            gone = s.gc.collected(task_id, attempt) if s.gc is not None else None
            if gone is not None:  # 410: it was here, and is no more
                return web.json_response({"error": f"the {stream} of task {task_id!r} "
                                          f"attempt {attempt} is gone: {gone}",
                                          "collected": True}, status=410)
            return web.json_response({"error": str(exc)}, status=404)
        except OSError as exc:  # e.g. a name too long for the file system: not here either
            return web.json_response({"error": f"no readable {stream} for task "
                                      f"{task_id[:30]!r} attempt {attempt}: "
                                      f"{exc.strerror or exc}"}, status=404)
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"X-Log-Offset": str(new_offset),
                                     "X-Log-Eof": "1" if eof else "0"})
