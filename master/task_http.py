"""The master's task endpoints: list, get, submit, kill, and logs through the master.

    GET  /master/tasks[?limit=&offset=&state=A,B&name=&order=]   (paged: task_listing.py)
    POST /master/tasks          (submit)       POST /master/tasks/kill   (bulk: bulk_kill.py)
    GET  /master/tasks/<id>                    POST /master/tasks/<id>/kill
    GET  /master/tasks/<id>/logs[?stream=&offset=&limit=&attempt=]

`TaskHttp(master)` serves them for a `Master`, mounted on its router by `master/http_api.py`
(which checks methods, the secret and cross-site writes). The endpoints run outside the
master's mailbox; what reads or changes the master's state runs inside it, through
`dispatch`. Contract:

- Every input problem is a 4xx `{"error": ...}` (validation in `master.api`), never a 500.
- Submits are atomic: the ids are allocated and the rows inserted in one transaction, from
  the HTTP handler, before the master learns of the tasks (`_accept`), so an error answer
  leaves no task anywhere and an answer with ids means durable tasks. The mailbox never
  waits on the database for a submit.
- A kill that only the database decides (a PENDING task, or one whose slave is gone) is
  answered 202 once KILLED is committed; otherwise 503, with the task put back exactly as it
  was. Repeated kills while one is being committed share its outcome. A kill of a task on a
  live slave is sent to that slave (202 KILLING); its status update settles it.
- A task the master no longer holds in memory (ended long enough ago) is read from the
  database: `GET` shows it, a kill is 409 (it has ended), its logs are read from the slave
  that ran it while that slave is known. A database that cannot be read is a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

import libproc
from libproc.future import as_future
from master import scheduler
from master.api import (
    LIMITS,
    ApiError,
    TaskSpec,
    decode_json,
    parse_bulk_kill,
    parse_log_query,
    parse_page_query,
    parse_submit,
    parse_task_id,
    shown,
)
from master.bulk_kill import bulk_kill
from master.store import RecordRefused, StoreError
from master.task_listing import TaskListing
from master.tasks import TaskRecord
from protos import cluster_pb2 as pb

if TYPE_CHECKING:
    from master.process import Master

__all__ = ["TaskHttp", "error"]

log = logging.getLogger("master")


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class TaskHttp:
    """The task endpoints of one master (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._kills: dict[str, asyncio.Future[str | None]] = {}  # kills being committed
        self.listing = TaskListing(master)

    def killing(self, tid: str) -> bool:
        """Whether a kill of the task is being committed."""
        return tid in self._kills

    # -- endpoints (outside the mailbox; see master/http_api.py) ------------------------

    async def list_tasks(self, request: web.BaseRequest, match: Mapping[str, str]) -> web.Response:
        try:
            query = parse_page_query(request.query)
            return web.json_response(await self.listing.page(query))
        except ApiError as exc:
            return error(exc.status, str(exc))
        except StoreError as exc:
            return error(503, f"cannot read tasks from the database now: {exc}")

    async def get_task(self, request: web.BaseRequest, match: Mapping[str, str]) -> web.Response:
        try:
            tid = parse_task_id(match["id"])
            task = await self.master.attempts.detail(tid)  # with its attempts and usage
        except ApiError as exc:
            return error(exc.status, str(exc))
        except StoreError as exc:
            return error(503, f"cannot read task {shown(match['id'])} from the database "
                         f"now: {exc}")
        if task is None:
            return error(404, f"no task with id {shown(tid)}")
        return web.json_response(task)

    async def kill_task(self, request: web.BaseRequest, match: Mapping[str, str]) -> web.Response:
        try:
            tid = parse_task_id(match["id"])
        except ApiError as exc:
            return error(exc.status, str(exc))
        answer: web.Response | None = await libproc.dispatch(self.master.pid, self._kill_id,
                                                             tid)
        if answer is not None:
            return answer
        try:  # not in memory: it has ended, or never existed
            task = await self.listing.find(tid)
        except StoreError as exc:
            return error(503, f"cannot read task {shown(tid)} from the database now: {exc}")
        if task is None:
            return error(404, f"no task with id {shown(tid)}")
        return error(409, f"task {tid} is already {task.state}")

    async def kill_many(self, request: web.BaseRequest, match: Mapping[str, str]) -> web.Response:
        """POST /master/tasks/kill (see master/bulk_kill.py)."""
        try:
            what = parse_bulk_kill(decode_json(await _read_body(request)))
            killed = await bulk_kill(self.master, what)
        except ApiError as exc:
            return error(exc.status, str(exc))
        except libproc.LibprocError as exc:
            return error(503, f"the master is stopping; nothing was killed ({exc})")
        return web.json_response({"killed": killed})

    async def task_logs(self, request: web.BaseRequest, match: Mapping[str, str]) -> web.Response:
        try:
            tid = parse_task_id(match["id"])
            params = parse_log_query(request.query)
        except ApiError as exc:
            return error(exc.status, str(exc))
        attempt = params.pop("attempt", None)  # default: the latest attempt
        try:
            source = await self.master.attempts.log_source(tid, int(attempt) if attempt
                                                           else None)
        except StoreError as exc:
            return error(503, f"cannot read task {shown(tid)} from the database now: {exc}")
        if isinstance(source, str):
            return error(404, source)
        return await _proxy_logs(tid, source, params)

    # -- in the mailbox ------------------------------------------------------------------

    def _kill_id(self, tid: str) -> Any:
        """The answer to a kill, or None when the master does not hold the task."""
        rec = self.master.tasks.get(tid)
        if rec is None:
            return None
        return self._kill(rec)

    # -- submit --------------------------------------------------------------------------

    async def submit_http(self, request: web.BaseRequest,
                          match: Mapping[str, str]) -> web.Response:
        """POST /master/tasks, outside the mailbox: read, validate, create durably, answer."""
        try:
            specs = parse_submit(decode_json(await _read_body(request)))
            records = await self.submit(specs)
        except ApiError as exc:
            return error(exc.status, str(exc))
        return web.json_response({"ids": [r.id for r in records]}, status=201)

    async def submit(self, specs: list[TaskSpec]) -> list[TaskRecord]:
        """Create tasks durably, then hand them to the master; the records as accepted.

        Atomic: when it raises ApiError (422: too big for every slave, or refused by the
        database; 503: the database cannot take writes now, or the master is stopping), no
        task exists — not in the database, not in memory, not queued. Call it on the event
        loop's thread, outside the master's mailbox (an HTTP handler, a test).
        """
        m = self.master
        try:
            too_big = await libproc.dispatch(m.pid, self._fit_error, specs)
        except libproc.LibprocError as exc:
            raise ApiError(f"the master is stopping; submit again to the next one ({exc})",
                           503) from None
        if too_big:
            raise ApiError(too_big, 422)
        try:
            records: list[TaskRecord] = await m.store.create_tasks(
                functools.partial(_new_tasks, specs, libproc.Clock.now()), len(specs))
        except RecordRefused as exc:
            raise ApiError(f"the database refused these tasks, so none was created: {exc}",
                           422) from None
        except StoreError as exc:
            raise ApiError(f"could not persist the tasks, so none was created; retry once "
                           f"the database is back: {exc}", 503) from None
        try:
            await libproc.dispatch(m.pid, self._accept, records)
        except libproc.LibprocError as exc:  # durable: the next master recovers them
            log.warning("tasks %s committed while the master stopped: %s",
                        ", ".join(r.id for r in records), exc)
        return records

    def _fit_error(self, specs: list[TaskSpec]) -> str | None:
        """In the mailbox: why some task can never run here (too big for every slave)."""
        totals = [s for s in self.master.slaves.values()
                  if s.state in ("active", "disconnected")]
        if totals:
            for i, spec in enumerate(specs):
                if not scheduler.fits_any(spec.cpus, spec.mem, totals):
                    where = "" if len(specs) == 1 else f"task {i}: "
                    return where + scheduler.too_big_message(spec.cpus, spec.mem, totals)
        return None

    def _accept(self, records: list[TaskRecord]) -> None:
        """In the mailbox: committed tasks join the task table and the PENDING queue."""
        m = self.master
        for rec in records:
            m.tasks[rec.id] = rec
            m._index.note(rec)
            m.events.publish_task(rec.to_json())
        m._schedule()

    # -- kill ----------------------------------------------------------------------------

    def _kill(self, rec: TaskRecord) -> Any:
        m = self.master
        outcome = self._kills.get(rec.id)
        if outcome is None:
            if rec.is_terminal:
                return error(409, f"task {rec.id} is already {rec.state}")
            slave = m.slaves.get(rec.slave_id or "")
            alive = slave is not None and slave.state in ("active", "disconnected")
            if rec.state != "PENDING" and slave is not None and alive:
                m._send_kill(slave, pb.TaskID(value=rec.id))
                return web.json_response({"id": rec.id, "state": "KILLING"}, status=202)
            # No slave to ask: the database's word decides, so answer once it is committed.
            outcome = self._kills[rec.id] = asyncio.get_running_loop().create_future()
            before = dataclasses.replace(rec)
            held = slave is not None and rec.id in slave.tasks
            m._release(rec)
            rec.transition("KILLED", libproc.Clock.now(),
                           message="killed by user before it started"
                           if rec.state == "PENDING" else "killed by user; its slave was gone")
            m._save(rec).add_done_callback(functools.partial(
                self._kill_saved_soon, rec, before, held, outcome))
        return as_future(_kill_answer(rec.id, outcome))

    def _kill_saved_soon(self, rec: TaskRecord, before: TaskRecord, held: bool,
                         outcome: asyncio.Future[str | None], saved: asyncio.Future[None]) -> None:
        libproc.dispatch(self.master.pid, self._kill_saved, rec, before, held, outcome, saved)

    def _kill_saved(self, rec: TaskRecord, before: TaskRecord, held: bool,
                    outcome: asyncio.Future[str | None], saved: asyncio.Future[None]) -> None:
        """In the mailbox: the KILLED save ended; keep it, or put the task back as it was."""
        m = self.master
        self._kills.pop(rec.id, None)
        exc = StoreError("the save was cancelled") if saved.cancelled() else saved.exception()
        if exc is not None:
            for f in dataclasses.fields(TaskRecord):
                setattr(rec, f.name, getattr(before, f.name))
            m._index.note(rec)
            slave = m.slaves.get(rec.slave_id or "")
            if held and slave is not None:
                m._claim(slave, rec)
            log.warning("kill of task %s not persisted, task left %s: %s", rec.id,
                        rec.state, exc)
            m._schedule()
        if not outcome.done():
            outcome.set_result(None if exc is None else str(exc))

async def _proxy_logs(tid: str, source: tuple[str, str, int],
                      params: dict[str, str]) -> web.Response:
    """Read a task's log through the master, so clients need to reach only the master."""
    slave_id, url, attempt = source
    params = {**params, "task_id": tid, "attempt": str(attempt)}
    try:
        async with ClientSession(timeout=ClientTimeout(total=10)) as session:
            async with session.get(url, params=params) as resp:
                body = await resp.read()
                headers = {k: v for k, v in resp.headers.items()
                           if k.lower().startswith("x-log-")}
                return web.Response(body=body, status=resp.status, headers=headers,
                                    content_type=resp.content_type)
    except Exception as exc:  # noqa: BLE001 - slave unreachable
        return error(502, f"could not read logs from slave {slave_id} at {url}: {exc}")


async def _kill_answer(tid: str, outcome: asyncio.Future[str | None]) -> web.Response:
    failure = await asyncio.shield(outcome)  # shared by repeated kills: never cancel it
    if failure is not None:
        return error(503, f"could not persist the kill of task {tid}, so nothing changed; "
                     f"retry once the database is back: {failure}")
    return web.json_response({"id": tid, "state": "KILLED"}, status=202)


async def _read_body(request: web.BaseRequest) -> bytes:
    """The body, or ApiError: 413 over the cap (before reading when the length says so)."""
    cap = int(LIMITS["max_body_bytes"])
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(f"request body is {request.content_length} bytes; at most {cap} are "
                       "accepted (submit fewer tasks per request)", 413)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(f"request body is over {cap} bytes; at most {cap} are accepted "
                       "(submit fewer tasks per request)", 413) from None
    except Exception as exc:  # noqa: BLE001 - the client went away, or sent a bad body
        raise ApiError(f"could not read the request body: {exc}") from None


def _new_tasks(specs: list[TaskSpec], now: float, numbers: list[int]) -> list[TaskRecord]:
    """The records of a submit, once the store has allocated their numbers (pure)."""
    return [TaskRecord.new(str(n), command=spec.command, cpus=spec.cpus, mem=spec.mem,
                           now=now, name=spec.name, timeout=spec.timeout, retries=spec.retries,
                           retry_delay=spec.retry_delay)
            for n, spec in zip(numbers, specs, strict=True)]
