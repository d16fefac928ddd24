"""Validation of the master's API input (pure): submit bodies, path ids, query parameters."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from master.api import (
    LIMITS,
    ApiError,
    check_text,
    decode_json,
    nesting_exceeds,
    parse_log_query,
    parse_states,
    parse_submit,
    parse_task_id,
)


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
            "name": st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=50),
        },
    )
)
def test_valid_tasks_round_trip(item: dict[str, object]) -> None:
    [spec] = parse_submit(item)
    assert spec.command == item["command"]
    if "cpus" in item:
        assert spec.cpus == item["cpus"]


# -- hostile input (issue 12): every problem is an ApiError with a 4xx, nothing else -------


def _refusal(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_submit(decode_json(raw))
    assert 400 <= info.value.status < 500
    return info.value


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_json_literals_are_refused_before_reaching_a_field(literal: bytes) -> None:
    err = _refusal(b'{"command": "x", "cpus": ' + literal + b"}")
    assert "finite number" in str(err)


@pytest.mark.parametrize("field", ["cpus", "mem", "timeout", "retries"])
def test_numbers_too_big_for_a_float_are_a_400_not_an_overflow(field: str) -> None:
    # 10**400 as a JSON literal: refused by its length before int() or float() sees it.
    err = _refusal(b'{"command": "x", "%s": 1%s}' % (field.encode(), b"0" * 400))
    assert "digits" in str(err)
    # The same number given as a Python int (parse_submit's own contract): no OverflowError.
    with pytest.raises(ApiError) as info:
        parse_submit({"command": "x", field: 10**400})
    assert field in str(info.value) and info.value.status == 400
    # 1e400 parses as inf: refused as not finite.
    if field != "retries":
        assert "finite" in str(_refusal(b'{"command": "x", "%s": 1e400}' % field.encode()))


def test_a_long_but_valid_number_still_names_its_range() -> None:
    err = _refusal(b'{"command": "x", "cpus": 1' + b"0" * 39 + b"}")
    assert "'cpus' must be > 0" in str(err)


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'[{"command": "x", "name": ' + b"[" * 40 + b"]" * 40 + b"}]",
])
def test_deep_nesting_is_refused_before_parsing(raw: bytes) -> None:
    assert "nested deeper" in str(_refusal(raw))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    command = '[[[[{{{{"\\\\' * 20  # brackets, quotes and backslashes inside a string
    [spec] = parse_submit(decode_json(json.dumps({"command": command}).encode()))
    assert spec.command == command


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_nested = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(_nested, st.integers(min_value=0, max_value=6))
def test_nesting_check_agrees_with_the_real_depth(value: object, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert nesting_exceeds(raw, limit) == (_depth(value) > limit)


@pytest.mark.parametrize(("item", "fragment"), [
    ({"command": "echo \ud800"}, "lone surrogate"),
    ({"command": "echo hi", "name": "\udfff"}, "lone surrogate"),
    ({"command": "echo a\0b"}, "NUL"),
    ({"command": "echo hi", "name": "a\0b"}, "NUL"),
    ({"command": "echo hi", "name": "red\x1b[31m"}, "control characters"),
    ({"command": "echo hi", "\ud800": 1}, "unknown field"),
])
def test_strings_that_cannot_be_stored_or_run_are_refused(item: dict[str, object],
                                                          fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_submit(item)
    assert fragment in str(info.value) and info.value.status == 400
    str(info.value).encode("utf-8")  # the message itself is sendable


def test_surrogate_escapes_in_the_body_are_refused_as_lone_surrogates() -> None:
    assert "lone surrogate" in str(_refusal(b'{"command": "echo \\ud800"}'))
    assert "lone surrogate" in str(_refusal(b'[{"command": "ok"}, {"command": "x", '
                                            b'"name": "\\udc00"}]'))
    # A proper pair is one character, and fine.
    [spec] = parse_submit(decode_json(b'{"command": "echo \\ud83d\\ude00"}'))
    assert spec.command == "echo \U0001F600"


def test_a_multi_line_command_keeps_its_newlines_and_tabs() -> None:
    [spec] = parse_submit({"command": "set -e\n\techo hi\n"})
    assert spec.command == "set -e\n\techo hi\n"


@pytest.mark.parametrize(("raw", "status", "fragment"), [
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b'{"command": "x"', 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b" " * (LIMITS["max_body_bytes"] + 1), 413, "at most"),
])
def test_bodies_that_are_not_json_are_refused(raw: bytes, status: int, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_json(raw)
    assert info.value.status == status and fragment in str(info.value)


_any_text = st.text(st.characters(), max_size=12)  # includes lone surrogates and NUL
_hostile = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["command", "name", "cpus", "mem", "timeout", "retries"]) | _any_text,
        inner, max_size=6),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(_hostile)
def test_any_body_gives_storable_specs_or_a_4xx(value: object) -> None:
    raw = json.dumps(value).encode()  # NaN/Infinity come out as the literals Python accepts
    try:
        specs = parse_submit(decode_json(raw))
    except ApiError as exc:
        assert 400 <= exc.status < 500 and str(exc)
        return
    for spec in specs:
        for text in (spec.command, spec.name):
            text.encode("utf-8")  # no lone surrogate
            assert "\0" not in text
        assert all(math.isfinite(x) for x in (spec.cpus, spec.mem, spec.timeout or 1.0))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_value_or_a_4xx(raw: bytes) -> None:
    try:
        parse_submit(decode_json(raw))
    except ApiError as exc:
        assert 400 <= exc.status < 500


def test_check_text_passes_clean_text_through() -> None:
    assert check_text("héllo wörld ✓", "name", controls=False) == "héllo wörld ✓"


@pytest.mark.parametrize(("raw", "fragment"), [
    ("\0", "NUL"), ("a\x07", "control"), ("", "1 to 255"), ("9" * 256, "1 to 255"),
])
def test_bad_task_ids_in_paths_are_400(raw: str, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_task_id(raw)
    assert info.value.status == 400 and fragment in str(info.value)
    assert parse_task_id("17") == "17"


def test_state_filters_are_checked() -> None:
    assert parse_states(None) is None and parse_states("") is None
    assert parse_states("running, Pending") == {"RUNNING", "PENDING"}
    for bad, fragment in (("RUNNING,BOGUS", "unknown state"), ("\0", "NUL")):
        with pytest.raises(ApiError) as info:
            parse_states(bad)
        assert info.value.status == 400 and fragment in str(info.value)


@pytest.mark.parametrize("query", [
    {"offset": "-1"}, {"offset": "1e3"}, {"offset": "9" * 30}, {"offset": str(2**63)},
    {"limit": " 5"}, {"limit": "١٢"}, {"stream": "stdin"}, {"stream": "../x"},
])
def test_bad_log_queries_are_400(query: dict[str, str]) -> None:
    with pytest.raises(ApiError) as info:
        parse_log_query(query)
    assert info.value.status == 400


def test_good_log_queries_pass_unchanged_and_extra_keys_are_dropped() -> None:
    assert parse_log_query({"stream": "stderr", "offset": "10", "limit": "5", "x": "y"}) == {
        "stream": "stderr", "offset": "10", "limit": "5"}
