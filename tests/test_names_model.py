"""libproc.names.model: names, queries, matching, routing choices and the instance cache."""

from __future__ import annotations

from collections import Counter

import pytest

from libproc.names import (
    OFFLINE,
    ONLINE,
    Directory,
    Instance,
    InvalidNameError,
    Notice,
    RoundRobin,
    matches,
    parse_name,
    parse_query,
    rendezvous_pick,
)
from libproc.names.model import rendezvous_score
from libproc.pid import UPID


def inst(name: str, port: int = 1000, user_data: str = "") -> Instance:
    return Instance(name, UPID("p", "127.0.0.1", port), user_data)


# -- names and queries ----------------------------------------------------------------------


def test_parse_name_accepts_four_dotted_parts() -> None:
    assert parse_name("demo.pong.dev.1") == ("demo", "pong", "dev", "1")
    assert parse_name("379440991.recv_server.zone-2.x") == ("379440991", "recv_server",
                                                             "zone-2", "x")


@pytest.mark.parametrize("text, reason", [
    ("demo.pong", "has 2 part(s), not exactly 4"),
    ("demo.pong.dev.1.2", "has 5 part(s)"),
    ("demo..dev.1", "part 2 '(empty)'"),
    ("demo.po ng.dev.1", "part 2 'po ng'"),
    ("demo.*.dev.1", "part 2 '*'"),
    ("", "it is empty"),
    ("demo.pong.dev." + "x" * 65, "part 4"),
])
def test_parse_name_refuses_malformed_names_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        parse_name(text)
    assert reason in str(info.value)
    assert "gameid.service.zone.extension" in str(info.value)


def test_parse_name_refuses_a_non_string() -> None:
    with pytest.raises(InvalidNameError, match="not a string"):
        parse_name(42)


def test_parse_query_allows_prefixes_and_wildcards() -> None:
    assert parse_query("demo") == ("demo",)
    assert parse_query("demo.pong") == ("demo", "pong")
    assert parse_query("demo.*.dev") == ("demo", "*", "dev")
    with pytest.raises(InvalidNameError, match="1 to 4"):
        parse_query("a.b.c.d.e")
    with pytest.raises(InvalidNameError, match="query"):
        parse_query("demo.")


@pytest.mark.parametrize("query, name, expected", [
    ("demo.pong", "demo.pong.dev.1", True),
    ("demo", "demo.pong.dev.1", True),
    ("demo.pong.dev.1", "demo.pong.dev.1", True),
    ("demo.pong.dev.2", "demo.pong.dev.1", False),
    ("demo.ping", "demo.pong.dev.1", False),
    ("demo.pon", "demo.pong.dev.1", False),  # parts match whole, not as string prefixes
    ("demo.*.dev", "demo.pong.dev.1", True),
    ("demo.*.prod", "demo.pong.dev.1", False),
    ("*", "other.pong.dev.1", True),
])
def test_matches_compares_whole_parts_as_a_prefix(query: str, name: str,
                                                  expected: bool) -> None:
    assert matches(parse_query(query), parse_name(name)) is expected


# -- stateless routing ----------------------------------------------------------------------


def test_round_robin_spreads_10000_sends_evenly() -> None:
    candidates = tuple(inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(3))
    rr = RoundRobin()
    counts = Counter(rr.pick(candidates) for _ in range(10_000))
    # Round robin is exact: the counts differ by at most one.
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 10_000 and len(counts) == 3


def test_round_robin_stays_even_after_an_instance_leaves() -> None:
    four = tuple(inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(4))
    rr = RoundRobin()
    for _ in range(1001):
        rr.pick(four)
    three = four[:2] + four[3:]
    counts = Counter(rr.pick(three) for _ in range(9_000))
    assert four[2] not in counts
    assert max(counts.values()) - min(counts.values()) <= 1


def test_round_robin_of_nothing_is_none() -> None:
    assert RoundRobin().pick(()) is None


# -- stateful routing -----------------------------------------------------------------------


def test_rendezvous_same_key_same_instance_whatever_the_order() -> None:
    candidates = [inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(5)]
    for key in ("alice", "bob", 42, b"raw"):
        first = rendezvous_pick(key, candidates)
        assert rendezvous_pick(key, list(reversed(candidates))) == first
        assert rendezvous_pick(key, candidates) == first


def test_rendezvous_spreads_keys_within_fifteen_percent() -> None:
    candidates = [inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(4)]
    counts = Counter(rendezvous_pick(f"user-{k}", candidates) for k in range(10_000))
    for c in counts.values():
        assert abs(c - 2_500) < 2_500 * 0.15, counts


def test_rendezvous_instance_leaving_moves_only_its_keys() -> None:
    candidates = [inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(5)]
    keys = [f"user-{k}" for k in range(5_000)]
    before = {k: rendezvous_pick(k, candidates) for k in keys}
    gone = candidates[2]
    after = {k: rendezvous_pick(k, [c for c in candidates if c != gone]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == gone for k in moved)
    assert all(after[k] != gone for k in keys)
    # The moved keys spread over the others rather than piling onto one.
    assert len({after[k] for k in moved}) == 4


def test_rendezvous_new_instance_takes_keys_only_for_itself() -> None:
    candidates = [inst(f"demo.pong.dev.{i}", 1000 + i) for i in range(3)]
    keys = [f"k{k}" for k in range(3_000)]
    before = {k: rendezvous_pick(k, candidates) for k in keys}
    newcomer = inst("demo.pong.dev.9", 1009)
    after = {k: rendezvous_pick(k, candidates + [newcomer]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(after[k] == newcomer for k in moved)


def test_rendezvous_hashes_the_name_not_the_upid() -> None:
    a = [inst("demo.pong.dev.1", 1001), inst("demo.pong.dev.2", 1002)]
    b = [inst("demo.pong.dev.1", 2001), inst("demo.pong.dev.2", 2002)]
    for key in range(200):
        assert rendezvous_pick(key, a).name == rendezvous_pick(key, b).name  # type: ignore[union-attr]
    assert rendezvous_score("k", "demo.pong.dev.1") == rendezvous_score("k", "demo.pong.dev.1")
    assert rendezvous_pick("k", []) is None


# -- the cache ------------------------------------------------------------------------------


def test_directory_resolve_then_notices_update_lookup_and_version() -> None:
    d = Directory()
    a, b = inst("demo.pong.dev.1", 1001), inst("demo.pong.dev.2", 1002)
    notices = d.resolve("demo.pong", [b, a], complete=True)
    assert [n.instance for n in notices] == [b, a] and all(n.online for n in notices)
    assert d.lookup("demo.pong") == (a, b)  # sorted by name
    v = d.version
    assert d.apply(Notice(ONLINE, a)) == []  # no change, no notice, same version
    assert d.version == v
    out = d.apply(Notice(OFFLINE, a, "killed"))
    assert out == [Notice(OFFLINE, a, "killed")] and d.version > v
    assert d.lookup("demo.pong") == (b,)


def test_directory_ignores_offline_for_another_upid_and_reports_replacement() -> None:
    d = Directory()
    old, new = inst("demo.pong.dev.1", 1001), inst("demo.pong.dev.1", 2001)
    d.resolve("demo", [old], complete=True)
    assert d.apply(Notice(OFFLINE, new)) == []  # stale: not the instance we know
    out = d.apply(Notice(ONLINE, new))
    assert [(n.kind, n.instance) for n in out] == [(OFFLINE, old), (ONLINE, new)]
    assert d.get("demo.pong.dev.1") == new


def test_directory_incomplete_snapshot_keeps_what_it_knew() -> None:
    d = Directory()
    a, b = inst("demo.pong.dev.1", 1001), inst("demo.pong.dev.2", 1002)
    d.resolve("demo.pong", [a, b], complete=True)
    assert d.resolve("demo.pong", [a], complete=False) == []
    assert d.lookup("demo.pong") == (a, b)
    out = d.resolve("demo.pong", [a], complete=True)
    assert [(n.kind, n.instance) for n in out] == [(OFFLINE, b)]
    assert d.lookup("demo.pong") == (a,)


def test_directory_complete_snapshot_removes_only_matching_instances() -> None:
    d = Directory()
    pong, ping = inst("demo.pong.dev.1", 1001), inst("demo.ping.dev.1", 1002)
    d.resolve("demo.pong", [pong], complete=True)
    d.resolve("demo.ping", [ping], complete=True)
    d.resolve("demo.pong", [], complete=True)
    assert d.lookup("demo.ping") == (ping,)
    assert d.lookup("demo.pong") == ()
