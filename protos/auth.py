"""How the cluster's control messages prove who sent them — pure: no I/O, no clock.

libprocess's `Libprocess-From` header is whatever the sender writes, so it proves nothing.
Master and slave therefore authenticate every control message that changes state:

* A slave's **credential** (32 bytes) is made by the master at the slave's first
  registration. Without a cluster secret the master sends it once, in the registration
  answer (an on-path sniffer can read it: there is no TLS). With a secret it never travels:
  both sides derive it from the secret and a random salt (`slave_key`).
* Every (re-)registration makes a fresh **session**: the key is derived from the credential,
  the slave's nonce (sent with its attempt, echoed by the answer, so nobody else can answer
  it) and the master's nonce (`session_key`). Every later message in either direction
  carries `auth {counter, mac}`: HMAC-SHA256 under the session key over the direction, the
  message's full name, the counter and the message serialized without `auth`. The receiver
  accepts each counter once (`ReplayWindow`), so a captured message cannot be replayed and a
  message from one direction cannot be reflected back.
* A first registration is signed only with a secret (`registration_key`); a
  re-registration is signed with the credential and carries a `sequence` that must grow,
  so an old one cannot be replayed.

All comparisons are constant-time (`hmac.compare_digest`). Nothing here logs keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Protocol

__all__ = [
    "MASTER_TO_SLAVE", "SLAVE_TO_MASTER", "ReplayWindow", "Session", "mac", "new_key",
    "new_nonce", "registration_key", "seal", "session_key", "slave_key", "verify",
]

MASTER_TO_SLAVE = b"M"
SLAVE_TO_MASTER = b"S"
NONCE_BYTES = 16
KEY_BYTES = 32


class _Auth(Protocol):
    counter: int
    mac: bytes


class Signed(Protocol):
    """A generated message with an `auth` field (`cluster.Auth`)."""

    @property
    def auth(self) -> _Auth: ...

    @property
    def DESCRIPTOR(self) -> object: ...  # noqa: N802 - protobuf's name

    def HasField(self, field_name: str) -> bool: ...  # noqa: N802
    def ClearField(self, field_name: str) -> None: ...  # noqa: N802
    def SerializeToString(self) -> bytes: ...  # noqa: N802


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _kdf(key: bytes, label: bytes, *parts: bytes) -> bytes:
    data = label + b"".join(len(p).to_bytes(2, "big") + p for p in parts)
    return hmac.digest(key, data, hashlib.sha256)


def registration_key(secret: str) -> bytes:
    """The key that signs first registrations in a cluster with a secret."""
    return _kdf(secret.encode("utf-8", "surrogatepass"), b"cluster/register")


def slave_key(secret: str, slave_id: str, salt: bytes) -> bytes:
    """A slave's credential in a cluster with a secret: derived, never sent."""
    return _kdf(secret.encode("utf-8", "surrogatepass"), b"cluster/slave-key",
                slave_id.encode(), salt)


def session_key(credential: bytes, slave_nonce: bytes, master_nonce: bytes) -> bytes:
    return _kdf(credential, b"cluster/session", slave_nonce, master_nonce)


def _full_name(msg: Signed) -> bytes:
    return str(getattr(msg.DESCRIPTOR, "full_name", "")).encode()


def mac(key: bytes, direction: bytes, msg: Signed, counter: int) -> bytes:
    """The MAC of `msg` as it is, with its `auth` field cleared (the field is cleared)."""
    msg.ClearField("auth")
    head = direction + b"\0" + _full_name(msg) + b"\0" + counter.to_bytes(8, "big")
    return hmac.digest(key, head + msg.SerializeToString(), hashlib.sha256)


def seal(msg: Signed, key: bytes, direction: bytes, counter: int) -> None:
    """Sign `msg` in place: set `auth` to `counter` and the MAC under `key`."""
    digest = mac(key, direction, msg, counter)
    msg.auth.counter = counter
    msg.auth.mac = digest


def verify(msg: Signed, key: bytes, direction: bytes) -> int | None:
    """The counter of a correctly signed `msg`, or None. Leaves `auth` cleared either way."""
    if not msg.HasField("auth"):
        return None
    counter, got = msg.auth.counter, msg.auth.mac
    want = mac(key, direction, msg, counter)
    return counter if hmac.compare_digest(want, got) else None


class ReplayWindow:
    """Accepts each counter at most once: any counter above the highest seen, or one of the
    last `size` below it not yet seen (messages may arrive a little out of order).
    Counters start at 1."""

    __slots__ = ("size", "top", "_seen")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.top = 0
        self._seen = 0  # bit i: counter top - i was seen

    def accept(self, counter: int) -> bool:
        if counter <= 0:
            return False
        if counter > self.top:
            shift = counter - self.top
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) \
                if shift < self.size else 1
            self.top = counter
            return True
        offset = self.top - counter
        if offset >= self.size or (self._seen >> offset) & 1:
            return False
        self._seen |= 1 << offset
        return True


class Session:
    """One side of a registration's session: signs what it sends, checks what it receives.

    `outgoing` is this side's direction (`SLAVE_TO_MASTER` on the slave). A message that
    fails `open` must be dropped without effect.
    """

    __slots__ = ("key", "outgoing", "incoming", "sent", "window")

    def __init__(self, key: bytes, outgoing: bytes) -> None:
        self.key = key
        self.outgoing = outgoing
        self.incoming = SLAVE_TO_MASTER if outgoing == MASTER_TO_SLAVE else MASTER_TO_SLAVE
        self.sent = 0
        self.window = ReplayWindow()

    def seal(self, msg: Signed) -> None:
        self.sent += 1
        seal(msg, self.key, self.outgoing, self.sent)

    def open(self, msg: Signed) -> bool:
        counter = verify(msg, self.key, self.incoming)
        return counter is not None and self.window.accept(counter)


class Refusals:
    """Counts refused messages and says when to log one: once per sender per `interval`
    seconds, however many it sends, remembering at most `max_senders` senders (the oldest
    are forgotten first, so a flood of invented senders costs bounded memory)."""

    __slots__ = ("interval", "max_senders", "total", "suppressed", "_last")

    def __init__(self, interval: float = 60.0, max_senders: int = 4096) -> None:
        self.interval = interval
        self.max_senders = max_senders
        self.total = 0
        self.suppressed = 0
        self._last: dict[str, float] = {}

    def refuse(self, sender: str, now: float) -> bool:
        """Count one refusal from `sender`; True when it should be logged now."""
        self.total += 1
        last = self._last.get(sender)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last.pop(sender, None)
        self._last[sender] = now
        while len(self._last) > self.max_senders:
            del self._last[next(iter(self._last))]
        return True
