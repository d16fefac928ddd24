"""ProtobufProcess: install handlers per protobuf message type, send and reply messages.

`install(MessageType, handler, "field", ...)` calls `handler(sender, field_value, ...)` with
the named fields unpacked (a repeated field arrives as a list), or `handler(sender, message)`
when no field is named. The message name on the wire is the type's full name, e.g.
`cluster.ReportProgressMessage`. A body that does not parse as that type (or misses a required
field) is logged, counted under `libproc/messages_undecodable`, and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage

from libproc.metrics import metrics
from libproc.pid import UPID
from libproc.process import Process

__all__ = ["ProtobufProcess"]

log = logging.getLogger("libproc.protobuf")


def _unpacker(message_type: type[PbMessage], field: str) -> Callable[[PbMessage], Any]:
    fd = message_type.DESCRIPTOR.fields_by_name.get(field)
    if fd is None:
        known = ", ".join(message_type.DESCRIPTOR.fields_by_name)
        raise ValueError(
            f"{message_type.DESCRIPTOR.full_name} has no field {field!r}; its fields are: {known}"
        )
    if fd.is_repeated:
        return lambda m: list(getattr(m, field))
    return lambda m: getattr(m, field)


class ProtobufProcess(Process):
    """A Process whose messages are protobufs."""

    def install(
        self,
        message: str | type[PbMessage],
        handler: Callable[..., Any],
        *fields: str,
    ) -> None:
        if isinstance(message, str):
            super().install(message, handler)
            return
        message_type = message
        name = message_type.DESCRIPTOR.full_name
        unpack = [_unpacker(message_type, f) for f in fields]
        parse = message_type.FromString

        def on_message(sender: UPID, body: bytes) -> Any:
            try:
                msg = parse(body)
            except (DecodeError, RuntimeWarning, ValueError) as exc:
                metrics.inc("libproc/messages_undecodable")
                log.warning("%s: dropping undecodable %s from %s: %s", self.id, name, sender, exc)
                return None
            if not msg.IsInitialized():
                # The Python runtime parses proto2 messages missing required fields; C++
                # libprocess's ParseFromString refuses them, so we drop them too.
                metrics.inc("libproc/messages_undecodable")
                missing = msg.FindInitializationErrors()  # type: ignore[attr-defined]
                log.warning("%s: dropping %s from %s: missing required field(s) %s", self.id,
                            name, sender, ", ".join(missing))
                return None
            if unpack:
                return handler(sender, *[u(msg) for u in unpack])
            return handler(sender, msg)

        super().install(name, on_message)

    def send(self, to: UPID, message: str | PbMessage, body: bytes = b"") -> None:
        if isinstance(message, str):
            super().send(to, message, body)
        else:
            super().send(to, message.DESCRIPTOR.full_name, message.SerializeToString())

    def reply(self, message: PbMessage) -> None:
        """Answer the sender of the message being handled now."""
        if self._current_from is None:
            raise RuntimeError(f"{self.id}: reply() outside a message handler has no one to answer")
        self.send(self._current_from, message)
