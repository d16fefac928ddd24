"""The CLI on the master's event stream: the SSE client (cli/event_feed.py) over real
sockets against a real EventHub, and `cluster wait` / `submit --wait` / `logs -f` as real
subprocesses — against a scripted front (tests/test_cli_event_front.py) for resets, new
boots, broken and hostile streams, and against a REAL master and slaves with the front
before them, or with no front at all (main's master has no /master/events: polling)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.client import MasterClient
from cli.event_feed import Event, EventFeed, Gone, Item, Refusal, Reset
from cli.follow import Follower
from test_cli_event_front import EventFront
from test_cli_support import (
    CLUSTER,
    clean_env,
    cluster_up,
    free_port,
    run_cli,
    spawn,
    stop,
    wait_until,
)

# -- the feed, in this process -------------------------------------------------------------


def _collect(feed: EventFeed, n: int, timeout: float = 20.0) -> list[Item]:
    """The next `n` items (keep-alive-free), or fail naming what came."""
    got: list[Item] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(feed.next(0.2))
    assert len(got) >= n, got
    return got


def _open(front: EventFront) -> EventFeed:
    opened = EventFeed.open(MasterClient(front.address, timeout=5))
    assert isinstance(opened, EventFeed), opened
    return opened


T0 = time.time()  # the tasks' clock: the hub stamps progress with the real time


def _task(tid: str, state: str, at: float, progress: float = 0.0) -> dict[str, Any]:
    """A task as the master shows it, changed at `T0 + at`."""
    ended = state in ("FINISHED", "FAILED", "KILLED", "LOST")
    return {"id": tid, "name": tid, "state": state, "progress": progress, "updated_at": T0 + at,
            "submitted_at": T0, "started_at": T0 if state != "PENDING" else None,
            "finished_at": T0 + at if ended else None, "attempts": 1, "retries": 0,
            "exit_code": {"FINISHED": 0, "FAILED": 3}.get(state), "message": "",
            "command": "true", "cpus": 0.1, "mem": 32, "slave_id": "s1"}


def test_feed_delivers_events_and_resumes_after_a_drop_without_missing_one() -> None:
    with EventFront() as front:
        feed = _open(front)
        try:
            wait_until(lambda: front.call(lambda: front.hub.subscribers) == 1, 10, "subscribed")
            front.set_task(_task("1", "RUNNING", 1.0))
            [first] = _collect(feed, 1)
            assert isinstance(first, Event) and first.payload["task"]["state"] == "RUNNING"
            front.drop_streams()  # the master closes the stream: the feed reconnects ...
            front.set_task(_task("1", "FINISHED", 2.0, 1.0))  # ... maybe after this
            [second] = _collect(feed, 1)
            assert isinstance(second, Event) and second.payload["task"]["state"] == "FINISHED"
            wait_until(lambda: feed.connections == 2, 10, "a second subscription")
            assert front.resumed_from == [None, "front1-1"]
            assert not feed.next(0.3)  # no reset: nothing was missed
        finally:
            feed.close()


def test_feed_says_reset_when_the_master_restarted() -> None:
    with EventFront() as front:
        feed = _open(front)
        try:
            front.set_task(_task("1", "RUNNING", 1.0))
            assert isinstance(_collect(feed, 1)[0], Event)
            front.new_boot()  # its Last-Event-ID is from another boot now
            [reset] = _collect(feed, 1)
            assert isinstance(reset, Reset) and "fetch the state again" in reset.reason
        finally:
            feed.close()


@pytest.mark.parametrize("mode,words,transient", [
    ("absent", "no endpoint GET /master/events", False),
    ("full", "too many event stream subscribers", True),
    ("plain", "is not an event stream (application/json", False),
])  # fmt: skip
def test_feed_refusals_say_why_and_whether_to_try_again(
    mode: str, words: str, transient: bool
) -> None:
    with EventFront(events=mode) as front:
        refused = EventFeed.open(MasterClient(front.address, timeout=5))
        assert isinstance(refused, Refusal) and refused.transient is transient
        assert "/master/events" in refused.reason and words in refused.reason


def test_feed_refuses_an_unreachable_master() -> None:
    refused = EventFeed.open(MasterClient(f"127.0.0.1:{free_port()}", timeout=5))
    assert isinstance(refused, Refusal) and refused.transient
    assert "cannot reach the master" in refused.reason


def test_feed_turns_garbage_into_resets_and_ends_when_the_master_goes_away() -> None:
    with EventFront(events="raw") as front:
        front.raw = [b"data: not json\n\n", b"data: [1, 2]\n\n", b"data: " + b"[" * 100_000
                     + b"\n\n", b'data: {"type": "task", "task": {"id": "1"}}\n\n']
        feed = _open(front)
        try:
            items = _collect(feed, 4)
            assert [type(i) for i in items[:4]] == [Reset, Reset, Reset, Event]
        finally:
            feed.close()
    with EventFront() as front:
        feed = EventFeed.open(MasterClient(front.address, timeout=2),
                              reconnect_delays=(0.0, 0.1, 0.2))
        assert isinstance(feed, EventFeed)
    # The front has stopped: reconnecting is refused, the feed ends with Gone.
    try:
        items = _collect(feed, 1)
        assert isinstance(items[-1], Gone) and "cannot reach the master" in items[-1].reason
        assert feed.ended and feed.next(0.1) == []
    finally:
        feed.close()


def test_feed_drops_a_stream_with_an_endless_line_and_resubscribes_from_now() -> None:
    with EventFront(events="raw") as front:
        front.raw = [b"id: x-1\ndata: {\"type\": \"slave\"}\n\n", b"data: " + b"z" * (9 << 20)]
        feed = _open(front)
        try:
            items = _collect(feed, 2)
            assert isinstance(items[0], Event)
            assert isinstance(items[1], Reset) and "over" in items[1].reason
            wait_until(lambda: feed.connections == 2, 10, "resubscribed")
            assert front.resumed_from == [None, None]  # from now: the bad event is not asked again
        finally:
            feed.close()
        assert feed._thread is not None and not feed._thread.is_alive()


# -- the follower (events, with polling as the fallback), in this process --------------------


def _follow_until(follower: Follower, predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        follower.step(0.2)


def test_follower_falls_back_to_polling_when_the_stream_goes_for_good() -> None:
    with EventFront() as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        follower = Follower(MasterClient(front.address, timeout=5), ["1"], poll=0.1)
        try:
            assert follower.streaming
            front.events = "absent"  # as a master restarted without the stream
            front.drop_streams()
            _follow_until(follower, lambda: not follower.streaming, "the fallback")
            refusal = follower.refusal
            assert refusal is not None and not refusal.transient  # not asked again every 30 s
            assert "no endpoint GET /master/events" in refusal.reason
            front.set_task(_task("1", "FINISHED", 9.0, 1.0), publish=False)  # seen by a poll
            _follow_until(follower, lambda: follower.view.done, "the poll")
        finally:
            follower.close()


def test_follower_tries_the_stream_again_after_a_transient_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cli.follow.RESUBSCRIBE_EVERY", 0.3)
    with EventFront(events="full") as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        follower = Follower(MasterClient(front.address, timeout=5), ["1"], poll=0.1)
        try:
            assert not follower.streaming and follower.refusal is not None
            assert follower.refusal.transient
            front.events = "on"
            _follow_until(follower, lambda: follower.streaming, "a new subscription")
            fetches = front.count("GET", "/master/tasks/1")
            front.set_task(_task("1", "FINISHED", 9.0, 1.0))  # an event now, not a poll
            _follow_until(follower, lambda: follower.view.done, "the event")
            assert front.count("GET", "/master/tasks/1") == fetches
        finally:
            follower.close()


def test_follower_fetches_now_and_then_in_case_a_change_was_not_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cli.follow.SAFETY_REFETCH", 0.5)
    with EventFront() as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        follower = Follower(MasterClient(front.address, timeout=5), ["1"])
        try:
            front.set_task(_task("1", "KILLED", 9.0), publish=False)
            _follow_until(follower, lambda: follower.view.done, "the safety fetch")
            assert follower.streaming and front.count("GET", "/master/tasks/1") == 2
        finally:
            follower.close()


# -- `cluster` against the scripted front ---------------------------------------------------


def _cli(front: EventFront, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, master=front.address, timeout=timeout)


def _start(front: EventFront, *args: str) -> Any:
    return spawn([*CLUSTER, *args], clean_env(CLUSTER_MASTER=front.address))


def _subscribed(front: EventFront, n: int = 1) -> None:
    """The `n`th event request arrived and a subscriber is there (one that left is counted
    by the hub until it notices, within a second: so count requests, not subscribers)."""
    wait_until(lambda: front.count("GET", "/master/events") >= n
               and front.call(lambda: front.hub.subscribers) >= 1, 20, "the CLI to subscribe")


def test_wait_follows_events_with_one_fetch_per_task_and_no_polling() -> None:
    with EventFront() as front:
        for tid in ("1", "2", "3"):
            front.set_task(_task(tid, "RUNNING", 1.0), publish=False)
        waiting = _start(front, "wait", "1", "2", "3", "--timeout", "60")
        try:
            _subscribed(front)
            wait_until(lambda: front.count("GET", "/master/tasks/3") == 1, 20, "the fetch")
            time.sleep(1.5)  # three poll intervals of the old way: no request is made now
            front.call(front.hub.publish_progress, "2", 0.5)
            later = time.time() - T0 + 1
            front.set_task(_task("1", "FINISHED", later, 1.0))
            front.set_task(_task("2", "FAILED", later, 0.5))
            front.set_task(_task("3", "FINISHED", later, 1.0))
            assert waiting.proc.wait(30) == 1  # one did not finish
        finally:
            stop(waiting)
        assert "task 2 FAILED" in waiting.stderr_text()
        assert waiting.stdout_text().count("FINISHED") == 2
        assert front.summary() == {"GET /master/events": 1, "GET /master/tasks/<id>": 3}


def test_wait_fetches_again_after_a_reset_and_sees_what_it_missed() -> None:
    with EventFront() as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        waiting = _start(front, "wait", "1", "--timeout", "60")
        try:
            _subscribed(front)
            wait_until(lambda: front.count("GET", "/master/tasks/1") == 1, 20, "the fetch")
            front.set_task(_task("1", "FINISHED", 2.0, 1.0), publish=False)  # unpublished
            front.new_boot()  # the master restarted: the CLI gets a reset and fetches
            assert waiting.proc.wait(30) == 0, waiting.stderr_text()
        finally:
            stop(waiting)
        assert front.count("GET", "/master/tasks/1") == 2
        assert front.count("GET", "/master/events") == 2  # resubscribed, with Last-Event-ID


def test_wait_timeout_and_ctrl_c_on_the_event_path() -> None:
    with EventFront() as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        result = _cli(front, "wait", "1", "--timeout", "1.5")
        assert result.returncode == 124 and "timed out waiting for 1 task(s)" in result.stderr
        assert "Traceback" not in result.stderr
        assert front.summary() == {"GET /master/events": 1, "GET /master/tasks/<id>": 1}
        waiting = _start(front, "wait", "1")
        try:
            _subscribed(front, 2)
            wait_until(lambda: front.count("GET", "/master/tasks/1") == 2, 20, "the fetch")
            waiting.proc.send_signal(signal.SIGINT)
            assert waiting.proc.wait(20) == 130
        finally:
            stop(waiting)
        assert "interrupted; the tasks keep running" in waiting.stderr_text()
        assert "Traceback" not in waiting.stderr_text()


@pytest.mark.parametrize("mode", ["absent", "full"])
def test_wait_falls_back_to_polling_without_a_stream(mode: str) -> None:
    with EventFront(events=mode) as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        waiting = _start(front, "wait", "1", "--timeout", "60")
        try:
            wait_until(lambda: front.count("GET", "/master/tasks/1") >= 3, 20, "polling")
            front.set_task(_task("1", "FINISHED", 2.0, 1.0), publish=False)
            assert waiting.proc.wait(30) == 0, waiting.stderr_text()
        finally:
            stop(waiting)
        assert front.count("GET", "/master/events") == 1


def test_wait_survives_a_garbage_stream_by_fetching() -> None:
    with EventFront(events="raw") as front:
        front.set_task(_task("1", "FINISHED", 2.0, 1.0), publish=False)
        front.set_task(_task("2", "RUNNING", 1.0), publish=False)
        front.raw = [b"data: {\"type\": \"task\", \"task\": [\"lies\"]}\n\n",
                     b"data: \xff\xfe garbage\n\n"]
        waiting = _start(front, "wait", "1", "2", "--timeout", "60")
        try:
            wait_until(lambda: front.count("GET", "/master/tasks/2") >= 2, 30, "a fetch after "
                       "the garbage")
            front.set_task(_task("2", "FINISHED", 3.0, 1.0), publish=False)
            front.drop_streams()  # the fetch after it sees FINISHED
            assert waiting.proc.wait(30) == 0, waiting.stderr_text()
        finally:
            stop(waiting)
        assert "Traceback" not in waiting.stderr_text()


def test_logs_follow_wakes_on_events_and_stops_at_the_final_state() -> None:
    with EventFront() as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        front.logs["1"] = (b"first\n", False)
        following = _start(front, "logs", "1", "-f")
        try:
            wait_until(lambda: "first" in following.stdout_text(), 20, "the first line")
            _subscribed(front)
            time.sleep(3.0)  # the wait between reads has grown: 0.5 s, 1 s, 2 s
            before, since = front.count("GET", "/master/tasks/1/logs"), time.monotonic()
            time.sleep(4.0)
            reads = front.count("GET", "/master/tasks/1/logs") - before
            # One read per 2 s while nothing happens (polling read every 0.5 s: 8 here).
            assert reads <= (time.monotonic() - since) / 2.0 + 1, reads
            front.call(front.logs.__setitem__, "1", (b"first\nPROGRESS 50\n", False))
            front.call(front.hub.publish_progress, "1", 0.5)
            wait_until(lambda: "PROGRESS 50" in following.stdout_text(), 10, "woken by progress")
            # The slave never says eof here: the FINISHED event ends it, once the log is read.
            front.call(front.logs.__setitem__, "1", (b"first\nPROGRESS 50\nlast\n", False))
            front.set_task(_task("1", "FINISHED", 2.0, 1.0))
            assert following.proc.wait(20) == 0, following.stderr_text()
        finally:
            stop(following)
        assert following.stdout_text() == "first\nPROGRESS 50\nlast\n"


def test_logs_follow_asks_once_for_a_flood_of_resets() -> None:
    with EventFront(events="raw") as front:
        front.set_task(_task("1", "RUNNING", 1.0), publish=False)
        front.logs["1"] = (b"out\n", False)
        front.raw = [b"data: junk\n\n" * 2000]  # 2,000 unreadable events: 2,000 resets
        following = _start(front, "logs", "1", "-f")
        try:
            wait_until(lambda: "out" in following.stdout_text(), 20, "the log")
            wait_until(lambda: front.count("GET", "/master/tasks/1", exact=True) >= 1, 20,
                       "a look at the task after the resets")
            front.call(front.logs.__setitem__, "1", (b"out\n", True))
            assert following.proc.wait(30) == 0, following.stderr_text()
        finally:
            stop(following)
        assert front.count("GET", "/master/tasks/1", exact=True) <= 2
        assert following.stdout_text() == "out\n"


def test_logs_follow_of_a_pending_task_waits_for_its_launch() -> None:
    with EventFront() as front:
        front.set_task(_task("1", "PENDING", 1.0), publish=False)
        following = _start(front, "logs", "1", "-f")
        try:
            _subscribed(front)
            wait_until(lambda: front.count("GET", "/master/tasks/1/logs") == 1, 20, "a look")
            since = time.monotonic()
            time.sleep(1.5)
            looks = front.count("GET", "/master/tasks/1/logs") - 1
            assert looks <= (time.monotonic() - since) / 2.0, looks  # news wakes it instead
            front.call(front.logs.__setitem__, "1", (b"hello\n", True))
            front.set_task(_task("1", "RUNNING", 2.0))
            assert following.proc.wait(20) == 0, following.stderr_text()
        finally:
            stop(following)
        assert following.stdout_text() == "hello\n"


# -- against a real master and slaves ------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with cluster_up(tmp_path_factory.mktemp("events"), 2) as (address, _, _):
        yield address


def test_submit_wait_through_events_makes_a_handful_of_requests(real: str) -> None:
    with EventFront(real) as front:
        result = _cli(front, "submit", "--count", "30", "--name", "ev", "--wait",
                      "echo PROGRESS 50; sleep 1")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(" FINISHED in ") == 30 and "all 30 task(s) FINISHED" in \
            result.stdout
        kinds = front.summary()
    assert kinds["POST /master/tasks"] == 1 and kinds["GET /master/events"] == 1
    assert kinds["GET /master/tasks"] <= 3  # the fetch, and the reasons while PENDING
    assert kinds["GET /master/tasks/<id>"] == 0
    assert sum(kinds.values()) <= 12, kinds


def test_submit_wait_on_a_terminal_draws_the_board_from_events(real: str) -> None:
    with EventFront(real) as front:
        result = run_cli("submit", "--count", "2", "--name", "evbar", "--wait",
                         "echo PROGRESS 50; sleep 1.5",
                         env=clean_env(CLUSTER_MASTER=front.address, FORCE_COLOR="1",
                                       COLUMNS="100"))
        assert result.returncode == 0, result.stderr
        assert front.count("GET", "/master/events") == 1
        assert front.count("GET", "/master/tasks", exact=True) <= 3
    final = result.stderr.rsplit("\x1b[?25h", 1)[0]
    assert "evbar-1" in final and "evbar-2" in final and "100%" in final
    assert "2/2 ended" in final


def test_submit_wait_polls_a_real_master_without_events(real: str) -> None:
    with EventFront(real, events="absent") as front:  # as a master without the stream
        result = _cli(front, "submit", "--count", "12", "--wait", "sleep 1.5")
        assert result.returncode == 0, result.stderr
        kinds = front.summary()
    assert kinds["GET /master/events"] == 1
    assert kinds["GET /master/tasks"] >= 3  # one listing per poll


def test_logs_follow_of_a_real_task_reads_less_with_events(real: str) -> None:
    script = "echo start; sleep 5; echo end"
    counts = {}
    for mode in ("on", "absent"):
        with EventFront(real, events=mode) as front:
            tid = json.loads(_cli(front, "submit", "--json", script).stdout)["ids"][0]
            result = _cli(front, "logs", tid, "-f")
            assert result.returncode == 0 and result.stdout == "start\nend\n", result.stderr
            counts[mode] = front.count("GET", f"/master/tasks/{tid}/logs")
    assert counts["on"] < counts["absent"], counts


def test_kill_while_waiting_ends_the_wait_through_events(real: str, tmp_path: Path) -> None:
    with EventFront(real) as front:
        tid = json.loads(_cli(front, "submit", "--json", "sleep 60").stdout)["ids"][0]
        waiting = _start(front, "wait", tid)
        try:
            _subscribed(front)
            wait_until(lambda: json.loads(_cli(front, "task", tid, "--json").stdout)["state"]
                       == "RUNNING", 20, "running")
            assert _cli(front, "kill", tid).returncode == 0
            assert waiting.proc.wait(30) == 1
        finally:
            stop(waiting)
        assert f"task {tid} KILLED" in waiting.stderr_text()


def test_submit_wait_follows_the_real_masters_own_event_stream(real: str) -> None:
    with EventFront(real, events="proxy") as front:  # /master/events from the real master
        result = _cli(front, "submit", "--count", "12", "--wait", "sleep 1.5")
        assert result.returncode == 0, result.stderr
        kinds = front.summary()
    assert kinds["GET /master/events"] == 1
    assert kinds.get("GET /master/tasks", 0) <= 2  # the first fetch, no polling
