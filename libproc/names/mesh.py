"""Mesh: a process's handle on the service mesh: register, watch, and send by service name.

    class Pong(libproc.ProtobufProcess):
        def initialize(self):
            self.mesh = names.Mesh(self)
            self.mesh.register("demo.pong.dev.1", user_data="v2")
            ...
            self.mesh.send_stateless("demo.pong", Msg(...))        # any online instance
            self.mesh.send_stateful("demo.pong", user_id, Msg(...))  # the same one per key
            self.mesh.send_to("demo.pong.dev.2", Msg(...))           # that one

A Mesh belongs to one process: call its methods from that process's handlers (it keeps the
process's round-robin counters). Sends read this OS process's cache (the names client's
Directory): once a query is resolved, a send costs a dictionary look-up and a pick, never a
round trip. The first send to a query not yet resolved subscribes to it and waits for the
name service's answer (at most the client's `resolve_timeout`).

Every send returns a Future: READY with the Instance the message went to (libprocess
delivery is still at most once: READY means sent, not received), FAILED with
NoInstanceError when no instance is online, InvalidNameError for a malformed query, or the
name service's reason when it refuses the watch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message as PbMessage

from libproc.defer import defer
from libproc.dispatch import dispatch
from libproc.future import Future
from libproc.names.client import NamesClient, NoticeCallback, Watch, default_client
from libproc.names.model import (
    Instance,
    InvalidNameError,
    NamesError,
    NoInstanceError,
    RoundRobin,
    parse_name,
    parse_query,
    rendezvous_pick,
)
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["Mesh"]

_send = Process.send  # the raw send (a ProtobufProcess overrides `send`)


def _encode(message: PbMessage | str, body: bytes) -> tuple[str, bytes]:
    if isinstance(message, str):
        return message, body
    return message.DESCRIPTOR.full_name, message.SerializeToString()


class Mesh:
    """See the module docstring. `client` defaults to this OS process's (`names.connect`)."""

    def __init__(self, process: Process, client: NamesClient | None = None) -> None:
        self.process = process
        self._client = client
        # (query, skip_self) -> [directory version, candidates, RoundRobin, indexes, futures]
        self._stateless: dict[tuple[str, bool], list[Any]] = {}
        # query -> (directory version, candidates)
        self._stateful: dict[str, tuple[int, tuple[Instance, ...]]] = {}

    @property
    def client(self) -> NamesClient:
        if self._client is None:
            self._client = default_client()
        return self._client

    # -- registration and watches -------------------------------------------------------

    def register(self, name: str, user_data: str = "", *,
                 replace: bool = False) -> Future[Instance]:
        """Register this process as an instance of `name` (a full four-part name).

        READY with the Instance once the name service confirmed; FAILED with
        InvalidNameError at once for a malformed name, or RegistrationRefusedError with the
        service's reason (wrong secret, name held by another UPID: see `replace`). PENDING
        while the service is unreachable (the client keeps retrying).
        """
        try:
            parse_name(name)
        except InvalidNameError as exc:
            return Future.failed(exc)
        instance = Instance(name, self.process.pid, user_data)
        return dispatch(self.client, NamesClient.register, instance, replace)

    def unregister(self, name: str) -> Future[bool]:
        """Withdraw `name`; watchers see it Offline. READY False if it was not registered."""
        return dispatch(self.client, NamesClient.unregister, name)

    def watch(self, query: str, on_notice: NoticeCallback | None = None, *,
              replay: bool = True) -> Watch:
        """Follow `query`: `on_notice(notice)` runs on this process for each Online/Offline
        (without a callback, iterate the Watch). Raises InvalidNameError for a bad query."""
        watch = Watch(self.client, query, self.process.pid, on_notice, replay)
        dispatch(self.client, NamesClient.watch, watch)
        return watch

    def lookup(self, query: str) -> tuple[Instance, ...]:
        """The cached online instances matching `query` (empty if it is not resolved yet)."""
        directory = self.client.directory
        return directory.lookup(query) if directory.is_resolved(query) else ()

    def resolve(self, query: str) -> Future[tuple[Instance, ...]]:
        """The online instances matching `query`, asking the name service if not cached."""
        try:
            parse_query(query)
        except InvalidNameError as exc:
            return Future.failed(exc)
        client = self.client
        if client.directory.is_resolved(query):
            return Future.ready(client.directory.lookup(query))
        timeout = client.resolve_timeout

        def expired(f: Future[Any]) -> Future[Any]:
            f.discard()
            return Future.failed(NamesError(
                f"could not resolve {query!r}: the name service {client.ns} did not answer "
                f"within {timeout:g}s; is it running, and is the address right?"))

        return dispatch(client, NamesClient.resolve, query).after(timeout, expired)

    # -- sends --------------------------------------------------------------------------

    def _later(self, query: str, retry: Callable[[], Future[Instance]]) -> Future[Instance]:
        """Resolve `query`, then run `retry` on this process."""
        return self.resolve(query).then(defer(self.process.pid, lambda _: retry()))

    def send_stateless(self, query: str, message: PbMessage | str, body: bytes = b"", *,
                       skip_self: bool = True) -> Future[Instance]:
        """Send to one online instance matching `query`, in round robin (each instance in
        turn, in name order), so the load spreads evenly. Offline instances are skipped as
        soon as their notice arrives; with `skip_self` this process is never picked."""
        directory = (self._client or self.client).directory
        entry = self._stateless.get((query, skip_self))
        if entry is None or entry[0] != directory.version:
            if not directory.is_resolved(query):
                return self._later(query, lambda: self.send_stateless(
                    query, message, body, skip_self=skip_self))
            entry = self._refresh(query, skip_self, entry)
        candidates = entry[1]
        if not candidates:
            return Future.failed(NoInstanceError(query, self._why_none(query, skip_self)))
        i = entry[2].pick(entry[3])  # round robin over indexes of `candidates`
        if isinstance(message, str):
            _send(self.process, candidates[i].pid, message, body)
        else:
            _send(self.process, candidates[i].pid, message.DESCRIPTOR.full_name,
                  message.SerializeToString())
        return entry[4][i]  # type: ignore[no-any-return]

    def _refresh(self, query: str, skip_self: bool, entry: list[Any] | None) -> list[Any]:
        directory = self.client.directory
        candidates = directory.lookup(query)
        if skip_self:
            me = self.process.pid
            candidates = tuple(i for i in candidates if i.pid != me)
        # A READY future never changes, so one per instance serves every send.
        ready = tuple(Future.ready(i) for i in candidates)
        if entry is None:
            entry = [directory.version, candidates, RoundRobin(), range(len(candidates)), ready]
            self._stateless[(query, skip_self)] = entry
        else:
            entry[0:2] = [directory.version, candidates]
            entry[3:5] = [range(len(candidates)), ready]
        return entry

    def send_stateful(self, query: str, key: object, message: PbMessage | str,
                      body: bytes = b"") -> Future[Instance]:
        """Send to the instance that owns `key` among those matching `query` (rendezvous
        hashing of key and instance name): the same key reaches the same instance while it
        is online, every caller agrees, and when an instance leaves only its keys move."""
        directory = (self._client or self.client).directory
        cached = self._stateful.get(query)
        if cached is None or cached[0] != directory.version:
            if not directory.is_resolved(query):
                return self._later(query, lambda: self.send_stateful(query, key, message, body))
            cached = (directory.version, directory.lookup(query))
            self._stateful[query] = cached
        inst = rendezvous_pick(key, cached[1])
        if inst is None:
            return Future.failed(NoInstanceError(query, self._why_none(query, False)))
        name, payload = _encode(message, body)
        _send(self.process, inst.pid, name, payload)
        return Future.ready(inst)

    def send_to(self, name: str, message: PbMessage | str, body: bytes = b"") -> Future[Instance]:
        """Send to the one instance registered as `name` (a full name), if it is online."""
        directory = (self._client or self.client).directory
        inst = directory.get(name)
        if inst is None:
            try:
                parse_name(name)
            except InvalidNameError as exc:
                return Future.failed(exc)
            if not directory.covers(name):
                return self._later(name, lambda: self.send_to(name, message, body))
            return Future.failed(NoInstanceError(name, "it is offline"))
        msg_name, payload = _encode(message, body)
        _send(self.process, inst.pid, msg_name, payload)
        return Future.ready(inst)

    def owner_of(self, query: str, key: object) -> Instance | None:
        """The instance `send_stateful(query, key, ...)` would pick now (from the cache)."""
        return rendezvous_pick(key, self.lookup(query))

    def instance_of(self, pid: UPID) -> Instance | None:
        """The cached instance whose UPID is `pid` (e.g. a message's sender), if known."""
        return self.client.directory.by_pid(pid)

    def _why_none(self, query: str, skip_self: bool) -> str:
        known = self.client.directory.lookup(query)
        if known and skip_self:
            return "the only one matching is this process itself (pass skip_self=False)"
        return f"the name service {self.client.ns} knows none"
