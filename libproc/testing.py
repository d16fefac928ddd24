"""Test hooks: wait for, or drop, the events on their way into processes (libprocess's
gmock.hpp: FUTURE_MESSAGE, DROP_MESSAGE, FUTURE_DISPATCH, ... and `inject::exited`).

    from libproc import testing
    from libproc.testing import ANY

    registered = testing.future_message("registered", ANY, slave.pid)   # Future[Message]
    testing.drop_messages(pb.Heartbeat, master.pid, ANY)                # every one, dropped
    launched = testing.future_dispatch(slave.pid, Slave.launch)          # Future[None]
    gone = testing.drop_exited(master.pid, slave.pid)                   # Future[None]
    testing.reset()                                                      # between tests

Each expectation watches the events delivered to local processes: messages (sent locally or
received from the network), dispatches and `exited` notices. It matches by

- message name: a string, a protobuf message class (its full name), or ANY;
- sender and receiver: a UPID, a Process, a UPID string, a bare process id (matches that id
  at any address), or ANY;
- dispatch method: a function (`Slave.launch`; the process's own override counts, as for
  `dispatch`), a bound method, a method name, or ANY.

`future_*` lets the event through and completes its Future as the event enters the mailbox
(before the process handles it); `drop_*` completes it and drops the event (a dropped dispatch's
Future is abandoned). Both match one event and then retire; `drop_messages`,
`drop_protobufs` and `drop_dispatches` drop every match until `reset()`. When several
expectations match, the newest wins, as in gmock. Messages that local processes send to other
OS processes are not seen (they are filtered where they are delivered, as in libprocess).

The uppercase names (FUTURE_MESSAGE, DROP_MESSAGE, ...) are the same functions under
libprocess's names. Expectations are per OS process and outlive `libproc.stop()`: call
`reset()` after each test (libprocess removes its filter at the end of every test). Use
these on the event loop's thread. With no expectation the filter is not even installed.
"""

from __future__ import annotations

from asyncio.trsock import TransportSocket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message as PbMessage

from libproc import runtime
from libproc.dispatch import resolve_method
from libproc.future import FAILED, READY, Future
from libproc.pid import UPID
from libproc.process import DISPATCH, EXITED, MESSAGE, Process, set_filter

__all__ = [
    "ANY", "Message", "reset", "inject_exited", "persistent_socket",
    "future_message", "drop_message", "drop_messages",
    "future_protobuf", "drop_protobuf", "drop_protobufs",
    "future_dispatch", "drop_dispatch", "drop_dispatches",
    "future_exited", "drop_exited",
    "FUTURE_MESSAGE", "DROP_MESSAGE", "DROP_MESSAGES",
    "FUTURE_PROTOBUF", "DROP_PROTOBUF", "DROP_PROTOBUFS",
    "FUTURE_DISPATCH", "DROP_DISPATCH", "DROP_DISPATCHES",
    "FUTURE_EXITED", "DROP_EXITED",
]


class _Anything:
    """Matches any name, pid or method (gmock's `_`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Anything()

PidSpec = UPID | Process | str | _Anything
NameSpec = str | type[PbMessage] | _Anything


@dataclass(frozen=True, slots=True)
class Message:
    """A message as it was delivered (libprocess's `Message`)."""

    name: str
    sender: UPID
    to: UPID
    body: bytes


Matcher = Callable[[Process, tuple[Any, ...]], bool]
Valuer = Callable[[Process, tuple[Any, ...]], Any]


@dataclass(slots=True)
class _Expectation:
    kind: int
    matches: Matcher
    value: Valuer
    future: Future[Any] | None
    drop: bool
    once: bool


_expectations: list[_Expectation] = []


def _filter(proc: Process, event: tuple[Any, ...]) -> bool:
    kind = event[0]
    for exp in reversed(_expectations):
        if exp.kind != kind or not exp.matches(proc, event):
            continue
        if exp.once:
            _expectations.remove(exp)
            if not _expectations:
                set_filter(None)
        if exp.future is not None:
            try:
                exp.future._complete(READY, exp.value(proc, event))
            except Exception as exc:  # e.g. a protobuf body that does not parse
                exp.future._complete(FAILED, error=exc)
        return exp.drop
    return False


def _expect(kind: int, matches: Matcher, value: Valuer, *, drop: bool, once: bool
            ) -> Future[Any]:
    future: Future[Any] = Future(False)
    _expectations.append(_Expectation(kind, matches, value, future if once else None,
                                      drop, once))
    set_filter(_filter)
    return future


def reset() -> None:
    """Remove every expectation (their Futures stay PENDING) and the filter."""
    _expectations.clear()
    set_filter(None)


# -- matching -------------------------------------------------------------------------


def _pid_matcher(spec: PidSpec) -> Callable[[UPID], bool]:
    if isinstance(spec, _Anything):
        return lambda pid: True
    if isinstance(spec, Process):
        return lambda pid: pid == spec.pid
    if isinstance(spec, UPID):
        return lambda pid: pid == spec
    if isinstance(spec, str):
        if "@" in spec:
            want = UPID.parse(spec)
            return lambda pid: pid == want
        return lambda pid: pid.id == spec
    raise TypeError(f"expected a UPID, a Process, a UPID string, a process id or ANY; got "
                    f"{type(spec).__name__} {spec!r}")


def _name_matcher(spec: NameSpec) -> Callable[[str], bool]:
    if isinstance(spec, _Anything):
        return lambda name: True
    if isinstance(spec, str):
        return lambda name: name == spec
    if isinstance(spec, type) and issubclass(spec, PbMessage):
        full = spec.DESCRIPTOR.full_name
        return lambda name: name == full
    raise TypeError(f"expected a message name, a protobuf message class or ANY; got "
                    f"{type(spec).__name__} {spec!r}")


def _message_matcher(name: NameSpec, sender: PidSpec, to: PidSpec) -> Matcher:
    name_ok, sender_ok, to_ok = _name_matcher(name), _pid_matcher(sender), _pid_matcher(to)
    return lambda proc, event: (name_ok(event[2]) and sender_ok(event[1])
                                and to_ok(proc.pid))


def _message(proc: Process, event: tuple[Any, ...]) -> Message:
    return Message(event[2], event[1], proc.pid, event[3])


def _function_of(fn: Any) -> Any:
    return getattr(fn, "__func__", fn)


def _dispatch_matcher(pid: PidSpec, method: Callable[..., Any] | str | _Anything) -> Matcher:
    to_ok = _pid_matcher(pid)
    if isinstance(method, _Anything):
        return lambda proc, event: to_ok(proc.pid)

    def matches(proc: Process, event: tuple[Any, ...]) -> bool:
        if not to_ok(proc.pid):
            return False
        try:
            want = resolve_method(proc, method)
        except AttributeError:
            return False
        return bool(_function_of(want) is _function_of(event[1]))

    return matches


def _exited_matcher(sender: PidSpec, to: PidSpec) -> Matcher:
    sender_ok, to_ok = _pid_matcher(sender), _pid_matcher(to)
    return lambda proc, event: sender_ok(event[1]) and to_ok(proc.pid)


def _nothing(proc: Process, event: tuple[Any, ...]) -> None:
    return None


# -- messages -------------------------------------------------------------------------


def future_message(name: NameSpec, sender: PidSpec, to: PidSpec) -> Future[Message]:
    """READY with the first matching message as it is delivered (it is still handled)."""
    return _expect(MESSAGE, _message_matcher(name, sender, to), _message, drop=False,
                   once=True)


def drop_message(name: NameSpec, sender: PidSpec, to: PidSpec) -> Future[Message]:
    """Drop the first matching message; READY with it."""
    return _expect(MESSAGE, _message_matcher(name, sender, to), _message, drop=True,
                   once=True)


def drop_messages(name: NameSpec, sender: PidSpec, to: PidSpec) -> None:
    """Drop every matching message until `reset()`."""
    _expect(MESSAGE, _message_matcher(name, sender, to), _nothing, drop=True, once=False)


def _parser(message_type: type[PbMessage]) -> Valuer:
    def parse(proc: Process, event: tuple[Any, ...]) -> PbMessage:
        return message_type.FromString(event[3])

    return parse


def future_protobuf(message_type: type[PbMessage], sender: PidSpec, to: PidSpec
                    ) -> Future[Any]:
    """READY with the first matching protobuf message, parsed (FAILED if it does not parse)."""
    return _expect(MESSAGE, _message_matcher(message_type, sender, to), _parser(message_type),
                   drop=False, once=True)


def drop_protobuf(message_type: type[PbMessage], sender: PidSpec, to: PidSpec) -> Future[Any]:
    """Drop the first matching protobuf message; READY with it, parsed."""
    return _expect(MESSAGE, _message_matcher(message_type, sender, to), _parser(message_type),
                   drop=True, once=True)


def drop_protobufs(message_type: type[PbMessage], sender: PidSpec, to: PidSpec) -> None:
    """Drop every matching protobuf message until `reset()`."""
    drop_messages(message_type, sender, to)


# -- dispatches and exited ------------------------------------------------------------


def future_dispatch(pid: PidSpec, method: Callable[..., Any] | str | _Anything
                    ) -> Future[None]:
    """READY when a matching dispatch enters `pid`'s mailbox (it still runs)."""
    return _expect(DISPATCH, _dispatch_matcher(pid, method), _nothing, drop=False, once=True)


def drop_dispatch(pid: PidSpec, method: Callable[..., Any] | str | _Anything) -> Future[None]:
    """Drop the first matching dispatch (its own Future is abandoned); READY then."""
    return _expect(DISPATCH, _dispatch_matcher(pid, method), _nothing, drop=True, once=True)


def drop_dispatches(pid: PidSpec, method: Callable[..., Any] | str | _Anything) -> None:
    """Drop every matching dispatch until `reset()`."""
    _expect(DISPATCH, _dispatch_matcher(pid, method), _nothing, drop=True, once=False)


def future_exited(sender: PidSpec, to: PidSpec) -> Future[None]:
    """READY when `to` is told that `sender` exited (it still handles `exited`)."""
    return _expect(EXITED, _exited_matcher(sender, to), _nothing, drop=False, once=True)


def drop_exited(sender: PidSpec, to: PidSpec) -> Future[None]:
    """Drop the first matching `exited` notice; READY then."""
    return _expect(EXITED, _exited_matcher(sender, to), _nothing, drop=True, once=True)


def persistent_socket(to: UPID) -> TransportSocket | None:
    """The socket of the persistent (linked) connection to `to`'s address once it is open,
    else None: for tests that break a link behind libproc's back (libprocess's
    `get_persistent_socket`)."""
    rt = runtime.current()
    if rt is None:
        return None
    conn = rt.transport.outbound.get(to.address)
    if conn is None or not conn.persistent or conn.state != "open" or conn.transport is None:
        return None
    sock = conn.transport.get_extra_info("socket")
    return sock if isinstance(sock, TransportSocket) else None


def inject_exited(sender: UPID, to: UPID | Process | str) -> bool:
    """Tell `to` that `sender` exited, as if a link broke (libprocess's `inject::exited`);
    False if `to` is not a live local process. The notice passes the filter too."""
    proc = runtime.lookup(to)
    if proc is None or proc.state in ("terminating", "terminated"):
        return False
    proc._enqueue((EXITED, sender))
    return True


FUTURE_MESSAGE = future_message
DROP_MESSAGE = drop_message
DROP_MESSAGES = drop_messages
FUTURE_PROTOBUF = future_protobuf
DROP_PROTOBUF = drop_protobuf
DROP_PROTOBUFS = drop_protobufs
FUTURE_DISPATCH = future_dispatch
DROP_DISPATCH = drop_dispatch
DROP_DISPATCHES = drop_dispatches
FUTURE_EXITED = future_exited
DROP_EXITED = drop_exited
