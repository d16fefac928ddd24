"""The pure part of libproc's service naming: names, queries, instances, routing, the cache.

No I/O, no processes: everything here is tested in isolation (tests/test_names_model.py).

- A service name is four dotted parts, `gameid.service.zone.extension` (`demo.pong.dev.1`);
  a part is 1-64 characters of letters, digits, `_` and `-`.
- A query is one to four parts; left-out trailing parts match anything (`demo.pong` matches
  every `demo.pong.*.*`), and a part `*` matches any part (`demo.*.dev`).
- An Instance is (name, UPID, user data). The name identifies it: routing hashes the name,
  not the UPID, so an instance restarted at another port under the same name gets its keys
  back.
- Stateless routing is round robin over the online instances sorted by name; stateful
  routing is rendezvous hashing (highest random weight) of (key, name): when an instance
  leaves, only the keys it owned move, and each moves to the instance that scores next.
- Directory is the per-OS-process cache of instances, kept by the names client from the
  name service's snapshots and notices; senders read it, only the client writes it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from libproc.errors import LibprocError
from libproc.pid import UPID

__all__ = [
    "NamesError", "InvalidNameError", "NoInstanceError", "RegistrationRefusedError",
    "parse_name", "parse_query", "matches", "Instance", "Notice", "ONLINE", "OFFLINE",
    "rendezvous_pick", "rendezvous_score", "RoundRobin", "Directory",
]

ONLINE = "online"
OFFLINE = "offline"

_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FORM = "four dotted parts gameid.service.zone.extension, e.g. demo.pong.dev.1"


class NamesError(LibprocError):
    """Base class of the name service's errors."""


class InvalidNameError(NamesError, ValueError):
    """A service name or query that does not have the dotted form."""

    def __init__(self, text: str, reason: str, what: str = "service name") -> None:
        super().__init__(f"invalid {what} {text!r}: {reason}; expected {_FORM}"
                         + (" (a query may leave trailing parts out: demo.pong)"
                            if what == "query" else ""))
        self.text = text


class NoInstanceError(NamesError):
    """A send found no online instance for its query or name."""

    def __init__(self, query: str, detail: str = "") -> None:
        super().__init__(
            f"no online instance of {query!r}{': ' + detail if detail else ''}; start one "
            "(it registers with the name service), or wait for its Online notice")
        self.query = query


class RegistrationRefusedError(NamesError):
    """The name service refused a registration; the message is its reason."""


def _split(text: object, what: str, min_parts: int, max_parts: int,
           wildcard: bool) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise InvalidNameError(repr(text), "not a string", what)
    if text == "":
        raise InvalidNameError(text, "it is empty", what)
    parts = tuple(text.split("."))
    if not min_parts <= len(parts) <= max_parts:
        count = f"exactly {max_parts}" if min_parts == max_parts else f"{min_parts} to {max_parts}"
        raise InvalidNameError(text, f"it has {len(parts)} part(s), not {count}", what)
    for i, part in enumerate(parts):
        if wildcard and part == "*":
            continue
        if not _PART.fullmatch(part):
            shown = part if part else "(empty)"
            raise InvalidNameError(
                text, f"part {i + 1} {shown!r} is not 1-64 letters, digits, '_' or '-'"
                + (" (or '*')" if wildcard else ""), what)
    return parts


def parse_name(text: object) -> tuple[str, ...]:
    """The four parts of a full service name; raises InvalidNameError with the reason."""
    return _split(text, "service name", 4, 4, wildcard=False)


def parse_query(text: object) -> tuple[str, ...]:
    """The one to four parts of a query (`*` allowed); raises InvalidNameError."""
    return _split(text, "query", 1, 4, wildcard=True)


def matches(query: Sequence[str], name: Sequence[str]) -> bool:
    """Does the parsed `query` match the parsed full `name`? (prefix, `*` = any part)"""
    if len(query) > len(name):
        return False
    for q, n in zip(query, name):
        if q != n and q != "*":
            return False
    return True


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance: its full service name, its UPID, its user data."""

    name: str
    pid: UPID
    user_data: str = ""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    def __str__(self) -> str:
        return f"{self.name}={self.pid}"


@dataclass(frozen=True, slots=True)
class Notice:
    """An instance came online (or changed its UPID or user data) or went offline."""

    kind: str  # ONLINE | OFFLINE
    instance: Instance
    reason: str = ""

    @property
    def online(self) -> bool:
        return self.kind == ONLINE

    def __str__(self) -> str:
        tail = f" ({self.reason})" if self.reason else ""
        return f"{self.kind.upper()} {self.instance.name} {self.instance.pid} " \
               f"{self.instance.user_data!r}{tail}"


# -- routing --------------------------------------------------------------------------------


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    return str(key).encode()


def rendezvous_score(key: object, name: str) -> int:
    """The weight of instance `name` for `key`: 64 bits of BLAKE2b over (name, key)."""
    digest = blake2b(name.encode() + b"\x00" + _key_bytes(key), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_pick(key: object, candidates: Sequence[Instance]) -> Instance | None:
    """The instance with the highest score for `key` (ties broken by name); None if empty.

    Every caller computes the same answer from the same set of names, with no coordination.
    """
    if not candidates:
        return None
    kb = _key_bytes(key)
    best: Instance | None = None
    best_score = -1
    for inst in candidates:
        score = int.from_bytes(
            blake2b(inst.name.encode() + b"\x00" + kb, digest_size=8).digest(), "big")
        if score > best_score or (score == best_score and best is not None
                                  and inst.name < best.name):
            best, best_score = inst, score
    return best


class RoundRobin:
    """Stateless picking: each call takes the next instance of the list it is given.

    The list is the current online set sorted by name; the counter survives changes of the
    set, so the spread stays even (within one message per instance) while the set is stable.
    It starts at a random place (unless `start` is given), so that many callers that send
    only a few messages each do not all begin with the same instance.
    """

    __slots__ = ("_next",)

    def __init__(self, start: int | None = None) -> None:
        self._next = random.randrange(1 << 30) if start is None else start

    def pick(self, candidates: Sequence[Instance]) -> Instance | None:
        n = len(candidates)
        if n == 0:
            return None
        i = self._next
        self._next = i + 1
        return candidates[i % n]


# -- the cache ------------------------------------------------------------------------------


class Directory:
    """The instances this OS process knows, by name, and the queries it has resolved.

    `version` changes on every change, so readers may cache what they derive from it.
    Only the names client writes; a writer applies one whole snapshot or notice at a time,
    on the event loop's thread, so a reader (any process of this OS process) always sees a
    consistent state.
    """

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.resolved: dict[str, tuple[str, ...]] = {}  # query text -> parsed query
        self.version = 0
        self._lists: dict[str, tuple[Instance, ...]] = {}
        self._by_pid: dict[UPID, Instance] | None = None

    def get(self, name: str) -> Instance | None:
        return self.instances.get(name)

    def is_resolved(self, query: str) -> bool:
        return query in self.resolved

    def by_pid(self, pid: UPID) -> Instance | None:
        """The known instance whose UPID is `pid` (the first by name if it has several)."""
        index = self._by_pid
        if index is None:
            index = {}
            for name in sorted(self.instances, reverse=True):
                inst = self.instances[name]
                index[inst.pid] = inst
            self._by_pid = index
        return index.get(pid)

    def covers(self, name: str) -> bool:
        """Does a resolved query match `name`? (then the cache is authoritative for it)"""
        if name in self.resolved:
            return True
        parts = tuple(name.split("."))
        return any(matches(q, parts) for q in self.resolved.values())

    def lookup(self, query: str) -> tuple[Instance, ...]:
        """The known instances matching `query`, sorted by name (cached until a change)."""
        cached = self._lists.get(query)
        if cached is not None:
            return cached
        parsed = self.resolved.get(query) or parse_query(query)
        out = tuple(sorted((i for i in self.instances.values() if matches(parsed, i.parts)),
                           key=lambda i: i.name))
        self._lists[query] = out
        return out

    def _changed(self) -> None:
        self.version += 1
        self._lists.clear()
        self._by_pid = None

    def apply(self, notice: Notice) -> list[Notice]:
        """Apply a notice; returns the notices that watchers should see (none if no change).

        An Online notice for a name known under another UPID is seen as the old instance
        going Offline, then the new one Online.
        """
        inst = notice.instance
        old = self.instances.get(inst.name)
        if notice.kind == ONLINE:
            if old == inst:
                return []
            self.instances[inst.name] = inst
            self._changed()
            if old is not None and old.pid != inst.pid:
                return [Notice(OFFLINE, old, f"replaced by {inst.pid}"), notice]
            return [notice]
        if old is None or old.pid != inst.pid:
            return []
        del self.instances[inst.name]
        self._changed()
        return [Notice(OFFLINE, old, notice.reason)]

    def resolve(self, query: str, instances: Iterable[Instance], complete: bool,
                reason: str = "not in the name service's answer") -> list[Notice]:
        """Apply a snapshot of `query`; returns the resulting notices.

        Instances of the snapshot come Online (if new or changed). With `complete`, known
        instances that match the query but are missing from it go Offline; an incomplete
        snapshot (a recovering name service) removes nothing.
        """
        parsed = parse_query(query)
        self.resolved[query] = parsed
        out: list[Notice] = []
        seen: set[str] = set()
        for inst in instances:
            seen.add(inst.name)
            out.extend(self.apply(Notice(ONLINE, inst)))
        if complete:
            for name, inst in list(self.instances.items()):
                if name not in seen and matches(parsed, inst.parts):
                    out.extend(self.apply(Notice(OFFLINE, inst, reason)))
        self._lists.pop(query, None)
        return out
