"""UPID: parse, format, compare; ID generation. Pure, no runtime."""

from __future__ import annotations

import pytest

from libproc import ID, UPID, InvalidUPIDError


def test_parse_reads_id_host_and_port() -> None:
    pid = UPID.parse("master@127.0.0.1:5050")
    assert (pid.id, pid.host, pid.port) == ("master", "127.0.0.1", 5050)
    assert pid.address == ("127.0.0.1", 5050)


def test_str_is_id_at_host_colon_port_and_round_trips() -> None:
    for text in (
        "master@127.0.0.1:5050",
        "slave(1)@10.0.0.5:5051",
        "@1.2.3.4:1",
        "pong@my-host.example:0",
    ):
        assert str(UPID.parse(text)) == text


def test_parse_strips_surrounding_whitespace() -> None:
    assert UPID.parse("  ping@127.0.0.1:99 \r\n") == UPID("ping", "127.0.0.1", 99)


def test_equal_upids_compare_and_hash_equal() -> None:
    a = UPID.parse("slave(2)@127.0.0.1:7")
    b = UPID("slave(2)", "127.0.0.1", 7)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != b.with_id("slave(3)")


def test_empty_id_names_only_an_address() -> None:
    pid = UPID.parse("@127.0.0.1:5050")
    assert pid.id == ""
    assert bool(pid)
    assert not bool(UPID("", "", 0))


def test_hostname_is_accepted_as_an_extension() -> None:
    assert UPID.parse("master@master.cluster:5050").host == "master.cluster"


def test_with_id_keeps_the_address() -> None:
    assert UPID.parse("@10.1.1.1:9").with_id("x") == UPID("x", "10.1.1.1", 9)


def test_upid_is_immutable() -> None:
    pid = UPID("a", "127.0.0.1", 1)
    with pytest.raises(AttributeError):
        pid.port = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("master127.0.0.1:5050", "missing '@'"),
        ("master@127.0.0.1", "missing host or ':port'"),
        ("master@:5050", "missing host"),
        ("master@127.0.0.1:http", "not a number"),
        ("master@127.0.0.1:", "not a number"),
        ("master@127.0.0.1:65536", "out of range"),
        ("master@127.0.0.1:123456", "not a number"),
        ("master@bad host:1", "not a host name"),
        ("ma ster@127.0.0.1:1", "contains a space"),
        ("a/b@127.0.0.1:1", "contains a space or '/'"),
        ("", "missing '@'"),
    ],
)
def test_parse_rejects_malformed_text_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidUPIDError) as info:
        UPID.parse(text)
    message = str(info.value)
    assert reason in message
    assert "id@host:port" in message


def test_invalid_upid_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        UPID.parse("nonsense")


def test_parse_rejects_a_non_string() -> None:
    with pytest.raises(InvalidUPIDError, match="not a string"):
        UPID.parse(5050)  # type: ignore[arg-type]


def test_id_generate_counts_up_per_prefix() -> None:
    prefix = "test-pid-prefix"
    first = ID.generate(prefix)
    second = ID.generate(prefix)
    other = ID.generate(prefix + "-other")
    assert first == f"{prefix}(1)"
    assert second == f"{prefix}(2)"
    assert other == f"{prefix}-other(1)"
