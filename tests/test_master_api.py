"""Validation of POST /master/tasks bodies (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from master.api import LIMITS, ApiError, parse_submit


def test_single_object_gets_defaults() -> None:
    [spec] = parse_submit({"command": "echo hi"})
    assert spec.command == "echo hi"
    assert spec.cpus > 0 and spec.mem > 0
    assert spec.timeout is None and spec.retries == 0


def test_list_of_tasks_is_parsed_in_order() -> None:
    specs = parse_submit([{"command": "a", "cpus": 1}, {"command": "b", "mem": 64, "retries": 2}])
    assert [s.command for s in specs] == ["a", "b"]
    assert specs[0].cpus == 1.0 and specs[1].mem == 64.0 and specs[1].retries == 2


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"command": ""}, "'command' must be a non-empty string"),
        ({"cmd": "x"}, "unknown field"),
        ({"command": "x", "cpus": -1}, "'cpus' must be > 0"),
        ({"command": "x", "cpus": 0}, "'cpus' must be > 0"),
        ({"command": "x", "cpus": "2"}, "'cpus' must be a number"),
        ({"command": "x", "cpus": True}, "'cpus' must be a number"),
        ({"command": "x", "mem": float("nan")}, "finite"),
        ({"command": "x", "retries": 1.5}, "'retries' must be an integer"),
        ({"command": "x", "timeout": 0}, "'timeout' must be > 0"),
        ([], "empty list"),
        ("echo hi", "expected a JSON object"),
        ([{"command": "ok"}, {"command": 3}], "task 1"),
    ],
)
def test_bad_submissions_name_the_problem(payload: object, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_submit(payload)
    assert fragment in str(info.value)
    assert info.value.status in (400, 413)


def test_too_many_tasks_is_413() -> None:
    with pytest.raises(ApiError) as info:
        parse_submit([{"command": "x"}] * (LIMITS["max_tasks_per_request"] + 1))
    assert info.value.status == 413


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_is_either_valid_specs_or_a_clear_api_error(payload: object) -> None:
    try:
        specs = parse_submit(payload)
    except ApiError as exc:
        assert str(exc) and exc.status in (400, 413)
        return
    for spec in specs:
        assert spec.command.strip()
        assert 0 < spec.cpus <= LIMITS["max_cpus"] and math.isfinite(spec.cpus)
        assert 0 < spec.mem <= LIMITS["max_mem"]
        assert 0 <= spec.retries <= LIMITS["max_retries"]


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"command": st.text(min_size=1, max_size=50).filter(lambda s: s.strip() and "\0" not in s)},
        optional={
            "cpus": st.floats(min_value=0.001, max_value=1024),
            "mem": st.floats(min_value=0.001, max_value=1e6),
            "retries": st.integers(min_value=0, max_value=100),
            "name": st.text(max_size=50),
        },
    )
)
def test_valid_tasks_round_trip(item: dict[str, object]) -> None:
    [spec] = parse_submit(item)
    assert spec.command == item["command"]
    if "cpus" in item:
        assert spec.cpus == item["cpus"]
