"""The pure parts of the CLI's event path: the SSE parser (cli/sse.py) and the set of tasks
a command waits for (cli/taskset.py), whose totals must match a count from scratch after
any sequence of changes, in any order of arrival."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from rich.console import Console

from cli.sse import SSEError, SSEEvent, SSEParser
from cli.taskset import TaskSet, is_final, shown_progress
from cli.watch import draw_board

# -- SSE ----------------------------------------------------------------------------------------

STREAM = (
    b"\xef\xbb\xbfretry: 2000\n: connected\n\n"
    b"id: b-1\ndata: {\"a\": 1}\n\n"
    b"id: b-2\r\ndata: line one\r\ndata:line two\r\n\r\n"
    b": keep-alive\r\r"
    b"event: custom\rdata\rid: b-3\r\r"
    b"id: bad\0id\ndata: x\n\n"
    b"data: no blank line yet"
)
EXPECTED = [
    SSEEvent('{"a": 1}', "message", "b-1"),
    SSEEvent("line one\nline two", "message", "b-2"),
    SSEEvent("", "custom", "b-3"),  # a bare `data` line is an empty data line: dispatched
    SSEEvent("x", "message", "b-3"),  # an id holding NUL is ignored: the last one stays
]


def _feed_all(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out, parser


def test_sse_parser_reads_fields_comments_and_every_line_ending() -> None:
    events, parser = _feed_all([STREAM])
    assert events == EXPECTED
    assert parser.retry_ms == 2000 and parser.comments == 2 and parser.last_id == "b-3"


@pytest.mark.parametrize("seed", range(20))
def test_sse_parser_gives_the_same_events_however_the_bytes_are_split(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
    assert _feed_all(chunks)[0] == EXPECTED
    one_by_one, _ = _feed_all([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert one_by_one == EXPECTED


def test_sse_parser_keeps_a_crlf_split_between_reads_as_one_line_end() -> None:
    events, _ = _feed_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [SSEEvent("a\nb")]  # not two events: the LFs after CRs are not lines


def test_sse_parser_bounds_lines_and_data() -> None:
    parser = SSEParser(max_event=1000)
    with pytest.raises(SSEError, match="line is over 1000"):
        for _ in range(20):
            parser.feed(b"data: " + b"x" * 100)  # no line end ever
    parser = SSEParser(max_event=1000)
    with pytest.raises(SSEError, match="data is over 1000"):
        for _ in range(20):
            parser.feed(b"data: " + b"y" * 90 + b"\n")  # many lines, never dispatched


def test_sse_parser_replaces_bad_utf8_and_ignores_bad_retry() -> None:
    events, parser = _feed_all([b"retry: 12x\ndata: caf\xc3\n\n"])
    assert events == [SSEEvent("caf\ufffd")] and parser.retry_ms is None


# -- the task set -------------------------------------------------------------------------------


def _task(tid: str, state: str, at: float, progress: float = 0.0, **extra: Any) -> dict:
    return {"id": tid, "name": tid, "state": state, "progress": progress, "updated_at": at,
            "started_at": 1.0, "finished_at": None, "attempts": 1, "retries": 0, **extra}


def test_an_older_update_never_replaces_a_newer_one_and_final_is_final() -> None:
    view = TaskSet(["1"], {"1": _task("1", "PENDING", 10.0)})
    assert view.update(_task("1", "RUNNING", 12.0))
    assert not view.update(_task("1", "STAGING", 11.0))  # late: older than what is held
    assert view.tasks["1"]["state"] == "RUNNING"
    assert view.update(_task("1", "FINISHED", 13.0, 1.0)) and view.done
    assert not view.update(_task("1", "RUNNING", 99.0))  # nothing leaves a final state
    assert view.newly_final == ["1"]


def test_a_failed_task_with_retries_left_is_waited_for_again() -> None:
    first = _task("1", "FAILED", 5.0, attempts=1, retries=2)
    assert not is_final(first)
    view = TaskSet(["1"], {"1": first})
    assert not view.done and view.ended == 1
    assert view.update(_task("1", "PENDING", 6.0, attempts=1, retries=2))
    assert view.update(_task("1", "LOST", 7.0, attempts=3, retries=2))
    assert view.done and is_final(view.tasks["1"])


def test_progress_applies_only_to_running_tasks_and_never_backwards() -> None:
    view = TaskSet(["1", "2"], {"1": _task("1", "RUNNING", 10.0), "2": _task("2", "PENDING", 1)})
    assert view.apply({"type": "progress", "tasks": [{"id": "1", "progress": 0.5,
                                                      "updated_at": 11.0}]})
    assert not view.set_progress({"id": "1", "progress": 0.2, "updated_at": 10.5})
    assert not view.set_progress({"id": "2", "progress": 0.9, "updated_at": 20.0})  # PENDING
    assert not view.set_progress({"id": "9", "progress": 0.9})  # not ours
    assert view.tasks["1"]["progress"] == 0.5 and view.total_progress == pytest.approx(0.25)


@pytest.mark.parametrize("payload", [
    {"type": "task", "task": "not a dict"},
    {"type": "task"},
    {"type": "progress", "tasks": "nope"},
    {"type": "progress", "tasks": [7, None, {"id": "1", "progress": "lots"}]},
    {"type": "slave", "slave": {"id": "s1"}},
    {"type": "from-the-future"},
])  # fmt: skip
def test_odd_events_change_nothing_or_count_as_zero(payload: dict[str, Any]) -> None:
    view = TaskSet(["1"], {"1": _task("1", "RUNNING", 10.0, 0.4)})
    view.apply(payload)
    assert view.tasks["1"]["state"] == "RUNNING"
    assert 0.0 <= view.total_progress <= 0.4


def test_hostile_values_are_shown_as_numbers() -> None:
    for progress in ("abc", None, float("nan"), float("inf"), 10**400, -3):
        assert 0.0 <= shown_progress({"state": "RUNNING", "progress": progress}) <= 1.0


@pytest.mark.parametrize("seed", range(8))
def test_totals_kept_as_tasks_change_match_a_count_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    ids = [str(i) for i in range(1, 41)]
    view = TaskSet(ids, {t: _task(t, "PENDING", 0.0) for t in ids})
    states = ["PENDING", "STAGING", "RUNNING", "FINISHED", "FAILED", "KILLED", "LOST"]
    for step in range(600):  # updates and progress, often late (older than held)
        tid = rng.choice(ids)
        at = step + rng.uniform(-30, 1)
        if rng.random() < 0.5:
            view.set_progress({"id": tid, "progress": rng.random(), "updated_at": at})
        else:
            view.update(_task(tid, rng.choice(states), at, rng.random(),
                              attempts=rng.randint(1, 3), retries=rng.randint(0, 2)))
    tasks = list(view.tasks.values())
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    assert {s: n for s, n in view.counts.items() if n} == counts
    assert view.final == sum(is_final(t) for t in tasks)
    assert view.total_progress == pytest.approx(sum(map(shown_progress, tasks)) / len(ids))
    order = {"RUNNING": 0, "STAGING": 0, "FAILED": 1, "LOST": 1, "KILLED": 1, "PENDING": 2,
             "FINISHED": 3}
    expected = sorted(ids, key=lambda t: (order[view.tasks[t]["state"]], ids.index(t)))[:20]
    assert view.rows(20) == expected


def test_a_board_of_ten_thousand_tasks_draws_twenty_rows_from_kept_totals() -> None:
    ids = [str(i) for i in range(1, 10_001)]
    tasks = {t: _task(t, "FINISHED", 1.0, 1.0) for t in ids}
    tasks["9999"] = _task("9999", "RUNNING", 2.0, 0.5)
    view = TaskSet(ids, tasks)
    rows = view.rows(20)
    assert rows[0] == "9999" and view.rows(20) is rows  # picked once until something changes
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(draw_board(view, now=10.0))
    text = buf.getvalue()
    assert "+9980 more" in text and "9999/10000 ended" in text
    assert len(text.splitlines()) == 22  # 20 rows, "+N more", total
    view.update(_task("9999", "FINISHED", 3.0, 1.0))
    assert view.rows(20) is not rows and view.done
