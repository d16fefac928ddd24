"""Input the retry and attempt features take: `retry_delay` in a submit, `attempt` in a log
read, and the isolation a registering slave claims — pure validation."""

from __future__ import annotations

import math

import pytest

from master.api import ApiError, decode_json, parse_log_query, parse_submit
from master.registry import isolation_of
from protos import cluster_pb2 as pb


def test_retry_delay_defaults_to_one_second_and_takes_zero() -> None:
    [spec] = parse_submit({"command": "x", "retries": 2})
    assert spec.retry_delay == 1.0
    [spec] = parse_submit({"command": "x", "retry_delay": None})
    assert spec.retry_delay == 1.0
    [spec] = parse_submit({"command": "x", "retry_delay": 0})
    assert spec.retry_delay == 0.0 and isinstance(spec.retry_delay, float)
    [spec] = parse_submit({"command": "x", "retry_delay": 2.5})
    assert spec.retry_delay == 2.5


@pytest.mark.parametrize("bad", [-1, -0.001, 3601, "1", True, [], {}, math.nan, math.inf,
                                 10**39])
def test_bad_retry_delays_are_refused_with_the_field_named(bad: object) -> None:
    with pytest.raises(ApiError) as info:
        parse_submit({"command": "x", "retry_delay": bad})
    assert "'retry_delay' must be a number of seconds from 0 to 3600" in str(info.value)
    assert info.value.status == 400


def test_retry_delay_from_a_raw_body_with_a_huge_number_is_a_clean_400() -> None:
    with pytest.raises(ApiError) as info:
        parse_submit(decode_json(b'{"command": "x", "retry_delay": 1e999}'))
    assert info.value.status == 400


def test_log_attempt_is_checked() -> None:
    assert parse_log_query({"attempt": "2", "stream": "stderr"}) == {"attempt": "2",
                                                                      "stream": "stderr"}
    assert parse_log_query({"attempt": "007"})["attempt"] == "7"
    assert "attempt" not in parse_log_query({})
    for bad in ("0", "-1", "x", "1.5", "", "102", "9" * 30, "１"):
        with pytest.raises(ApiError) as info:
            parse_log_query({"attempt": bad})
        assert "'attempt'" in str(info.value) and info.value.status == 400


def registration(**iso: object) -> pb.RegisterSlaveMessage:
    msg = pb.RegisterSlaveMessage(resources=pb.Resources(cpus=1, mem=1))
    if iso:
        msg.isolation.CopyFrom(pb.Isolation(**iso))  # type: ignore[arg-type]
    return msg


def test_a_slaves_isolation_is_kept_when_it_is_a_value_a_slave_may_send() -> None:
    got = isolation_of(registration(mode="cgroups", cgroup_version="v1", cpu_limit="hard",
                                    task_pids_max=1024))
    assert got == {"isolation": "cgroups", "cgroup_version": "v1", "cpu_limit": "hard",
                   "task_pids_max": 1024}
    none = isolation_of(registration(mode="none", cgroup_version="", cpu_limit="soft",
                                     task_pids_max=0))
    assert none == {"isolation": "none", "cgroup_version": None, "cpu_limit": "soft",
                    "task_pids_max": 0}


def test_an_older_slave_says_nothing_and_gets_nulls() -> None:
    assert isolation_of(registration()) == dict.fromkeys(
        ("isolation", "cgroup_version", "cpu_limit", "task_pids_max"))
    assert isolation_of(pb.ReregisterSlaveMessage(
        slave_id=pb.SlaveID(value="s"), resources=pb.Resources(cpus=1, mem=1)))[
        "isolation"] is None


def test_strings_a_slave_may_not_send_are_never_echoed() -> None:
    got = isolation_of(registration(mode="<script>" + "x" * 100_000, cgroup_version="v3\0",
                                    cpu_limit="\ud800".encode("utf-8", "surrogatepass")
                                    .decode("utf-8", "replace"), task_pids_max=2**32 - 1))
    assert got == {"isolation": "unknown", "cgroup_version": "unknown",
                   "cpu_limit": "unknown", "task_pids_max": None}
