"""Future/Promise: every state, callback order, then/repair/after, collect/await_, asyncio."""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import pytest

import libproc.future
from libproc import (
    Clock,
    Future,
    FutureDiscardedError,
    FutureFailedError,
    Promise,
    as_future,
    await_,
    collect,
)
from libproc.errors import FutureError, FuturePendingError


@pytest.fixture(autouse=True)
def _clock() -> Any:
    Clock.reset()
    yield
    Clock.reset()


# -- states ---------------------------------------------------------------------------


def test_new_future_is_pending_and_get_raises() -> None:
    p: Promise[int] = Promise()
    f = p.future
    assert f.state == "PENDING"
    assert f.is_pending() and not f.is_ready() and not f.is_failed() and not f.is_discarded()
    with pytest.raises(FuturePendingError):
        f.get()


def test_set_makes_future_ready_with_value() -> None:
    p: Promise[int] = Promise()
    assert p.set(42) is True
    assert p.future.state == "READY"
    assert p.future.is_ready()
    assert p.future.get() == 42


def test_fail_with_message_makes_future_failed() -> None:
    p: Promise[int] = Promise()
    assert p.fail("disk full") is True
    f = p.future
    assert f.is_failed()
    assert f.failure() == "disk full"
    with pytest.raises(FutureFailedError, match="disk full"):
        f.get()


def test_fail_with_exception_reraises_that_exception() -> None:
    p: Promise[int] = Promise()
    error = KeyError("k")
    p.fail(error)
    assert p.future.exception is error
    with pytest.raises(KeyError):
        p.future.get()


def test_exception_is_none_unless_failed_even_for_an_exception_value() -> None:
    """A FAILED future keeps its exception where a READY one keeps its value: a READY future
    whose value is an exception is not failed, and has no `exception`."""
    p: Promise[Exception] = Promise()
    assert p.future.exception is None
    value = ValueError("a value, not a failure")
    p.set(value)
    assert p.future.is_ready() and p.future.get() is value
    assert p.future.exception is None
    assert str(p.future) == "Ready"


def test_promise_discard_makes_future_discarded() -> None:
    p: Promise[int] = Promise()
    assert p.discard() is True
    assert p.future.is_discarded()
    with pytest.raises(FutureDiscardedError):
        p.future.get()


def test_failure_on_a_non_failed_future_raises() -> None:
    with pytest.raises(FutureError, match="READY"):
        Future.ready(1).failure()


def test_a_future_completes_only_once() -> None:
    p: Promise[int] = Promise()
    p.set(1)
    assert p.set(2) is False
    assert p.fail("late") is False
    assert p.discard() is False
    assert p.future.get() == 1


def test_ready_failed_discarded_constructors() -> None:
    assert Future.ready("v").get() == "v"
    assert Future.failed("boom").failure() == "boom"
    assert Future.discarded().is_discarded()


# -- callbacks ------------------------------------------------------------------------


def test_callbacks_run_in_the_order_added_and_only_for_their_state() -> None:
    calls: list[str] = []
    p: Promise[int] = Promise()
    f = p.future
    f.on_any(lambda _: calls.append("any1"))
    f.on_ready(lambda v: calls.append(f"ready1:{v}"))
    f.on_failed(lambda m: calls.append("failed"))
    f.on_discarded(lambda: calls.append("discarded"))
    f.on_any(lambda fut: calls.append(f"any2:{fut.state}"))
    f.on_ready(lambda v: calls.append(f"ready2:{v}"))
    assert calls == []
    p.set(7)
    assert calls == ["any1", "ready1:7", "any2:READY", "ready2:7"]


def test_callbacks_on_failure_get_the_message() -> None:
    calls: list[Any] = []
    p: Promise[int] = Promise()
    p.future.on_ready(calls.append).on_failed(calls.append).on_discarded(
        lambda: calls.append("discarded")
    )
    p.fail("broken pipe")
    assert calls == ["broken pipe"]


def test_callbacks_on_discarded_run() -> None:
    calls: list[Any] = []
    p: Promise[int] = Promise()
    p.future.on_ready(calls.append).on_failed(calls.append).on_discarded(
        lambda: calls.append("discarded")
    )
    p.discard()
    assert calls == ["discarded"]


def test_callback_added_after_completion_runs_at_once() -> None:
    calls: list[Any] = []
    f = Future.ready(3)
    f.on_ready(calls.append)
    f.on_any(lambda fut: calls.append(fut.get() * 10))
    f.on_failed(lambda m: calls.append("never"))
    assert calls == [3, 30]


def test_a_raising_callback_does_not_stop_the_others() -> None:
    calls: list[int] = []
    p: Promise[int] = Promise()

    def bad(_: int) -> None:
        raise RuntimeError("callback bug")

    p.future.on_ready(bad).on_ready(calls.append)
    p.set(5)
    assert calls == [5]
    assert p.future.get() == 5


def test_discard_request_runs_on_discard_but_leaves_future_pending() -> None:
    requested: list[str] = []
    p: Promise[int] = Promise()
    p.future.on_discard(lambda: requested.append("first"))
    assert p.future.discard() is True
    assert p.future.discard() is False  # only the first request counts
    assert requested == ["first"]
    assert p.future.is_pending()
    assert p.future.has_discard()
    p.future.on_discard(lambda: requested.append("late"))  # runs at once now
    assert requested == ["first", "late"]
    p.discard()
    assert p.future.is_discarded()


def test_discard_request_on_a_completed_future_is_ignored() -> None:
    requested: list[str] = []
    f = Future.ready(1)
    f.on_discard(lambda: requested.append("x"))
    assert f.discard() is False
    assert requested == []
    assert f.is_ready()


# -- then / repair --------------------------------------------------------------------


def test_then_chains_values() -> None:
    p: Promise[int] = Promise()
    result = p.future.then(lambda v: v + 1).then(lambda v: v * 2)
    assert result.is_pending()
    p.set(20)
    assert result.get() == 42


def test_then_callback_may_return_a_future() -> None:
    p: Promise[int] = Promise()
    inner: Promise[str] = Promise()
    result = p.future.then(lambda v: inner.future)
    p.set(1)
    assert result.is_pending()
    inner.set("from inner")
    assert result.get() == "from inner"


def test_then_with_inner_failed_future_fails() -> None:
    result = Future.ready(1).then(lambda v: Future.failed("inner failed"))
    assert result.failure() == "inner failed"


def test_then_callback_exception_fails_the_chain() -> None:
    def boom(_: int) -> int:
        raise ValueError("bad value")

    result = Future.ready(1).then(boom).then(lambda v: v)
    assert result.is_failed()
    assert isinstance(result.exception, ValueError)


def test_then_skips_callback_on_failure_and_discard() -> None:
    called: list[int] = []
    failed = Future.failed("upstream").then(called.append)
    discarded = Future.discarded().then(called.append)
    assert called == []
    assert failed.failure() == "upstream"
    assert discarded.is_discarded()


def test_discarding_a_then_result_requests_discard_upstream() -> None:
    p: Promise[int] = Promise()
    requested: list[bool] = []
    p.future.on_discard(lambda: requested.append(True))
    chained = p.future.then(lambda v: v).then(lambda v: v)
    chained.discard()
    assert requested == [True]
    p.discard()
    assert chained.is_discarded()


async def test_then_callback_may_return_a_coroutine() -> None:
    async def later(v: int) -> int:
        await asyncio.sleep(0)
        return v * 3

    result = Future.ready(5).then(later)
    assert await asyncio.wait_for(_aw(result), 2) == 15


def test_repair_recovers_a_failure_and_passes_ready_through() -> None:
    assert Future.failed("x").repair(lambda f: f"recovered {f.failure()}").get() == "recovered x"
    assert Future.ready(2).repair(lambda f: 99).get() == 2


# -- after (Clock-driven) -------------------------------------------------------------


async def test_after_fires_when_still_pending_after_clock_advance() -> None:
    Clock.pause()
    p: Promise[int] = Promise()
    result = p.future.after(10, lambda f: (f.discard(), "timed out")[1])
    Clock.advance(9.9)
    assert result.is_pending()
    Clock.advance(0.2)
    assert result.get() == "timed out"
    assert p.future.has_discard()


async def test_after_mirrors_the_future_when_it_completes_first() -> None:
    Clock.pause()
    p: Promise[int] = Promise()
    result = p.future.after(10, lambda f: "timed out")
    p.set(4)
    Clock.advance(100)
    assert result.get() == 4


# -- combinators ----------------------------------------------------------------------


def test_collect_is_ready_with_values_in_input_order() -> None:
    a: Promise[int] = Promise()
    b: Promise[int] = Promise()
    result = collect(a.future, b.future, Future.ready(3))
    b.set(2)
    assert result.is_pending()
    a.set(1)
    assert result.get() == [1, 2, 3]


def test_collect_accepts_a_list_and_an_empty_one() -> None:
    assert collect([Future.ready(1), Future.ready(2)]).get() == [1, 2]
    assert collect().get() == []


def test_collect_fails_as_soon_as_one_fails() -> None:
    a: Promise[int] = Promise()
    result = collect(a.future, Future.failed("second broke"))
    assert result.failure() == "second broke"


def test_collect_fails_when_one_is_discarded() -> None:
    a: Promise[int] = Promise()
    b: Promise[int] = Promise()
    result = collect(a.future, b.future)
    b.discard()
    assert result.is_failed()
    assert "discarded" in result.failure()


def test_discarding_collect_requests_discard_of_every_input() -> None:
    a: Promise[int] = Promise()
    b: Promise[int] = Promise()
    collect(a.future, b.future).discard()
    assert a.future.has_discard() and b.future.has_discard()


def test_await_waits_for_all_whatever_their_state() -> None:
    a: Promise[int] = Promise()
    b: Promise[int] = Promise()
    result = await_(a.future, b.future)
    a.fail("nope")
    assert result.is_pending()
    b.set(1)
    futures = result.get()
    assert [f.state for f in futures] == ["FAILED", "READY"]
    assert await_().get() == []


# -- asyncio interop ------------------------------------------------------------------


async def _aw(f: Future[Any]) -> Any:
    return await f


async def test_await_a_future_returns_its_value() -> None:
    p: Promise[str] = Promise()
    asyncio.get_running_loop().call_soon(p.set, "hello")
    assert await asyncio.wait_for(_aw(p.future), 2) == "hello"


async def test_await_a_failed_future_raises_its_exception() -> None:
    p: Promise[str] = Promise()
    asyncio.get_running_loop().call_soon(p.fail, OSError("gone"))
    with pytest.raises(OSError, match="gone"):
        await asyncio.wait_for(_aw(p.future), 2)
    with pytest.raises(FutureFailedError, match="plain"):
        await Future.failed("plain")


async def test_await_a_discarded_future_raises_future_discarded_error() -> None:
    p: Promise[str] = Promise()
    asyncio.get_running_loop().call_soon(p.discard)
    with pytest.raises(FutureDiscardedError):
        await asyncio.wait_for(_aw(p.future), 2)


async def test_cancelling_the_awaiting_task_requests_a_discard() -> None:
    p: Promise[str] = Promise()
    task = asyncio.ensure_future(_aw(p.future))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.future.has_discard()
    assert p.future.is_pending()


async def test_as_future_of_a_coroutine_becomes_ready() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 11

    f = as_future(work())
    assert f.is_pending()
    assert await asyncio.wait_for(_aw(f), 2) == 11
    assert f.is_ready()


async def test_as_future_of_a_raising_coroutine_fails_with_its_exception() -> None:
    async def work() -> int:
        raise LookupError("missing")

    f = as_future(work())
    with pytest.raises(LookupError):
        await asyncio.wait_for(_aw(f), 2)
    assert isinstance(f.exception, LookupError)


async def test_as_future_of_a_cancelled_task_is_discarded_and_discard_cancels() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(forever())
    f = as_future(task)
    await asyncio.wait_for(started.wait(), 2)
    f.discard()  # a discard request cancels the task ...
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert task.cancelled()
    assert f.is_discarded()  # ... which completes the future as DISCARDED


def test_as_future_of_a_plain_value_or_future() -> None:
    assert as_future(5).get() == 5
    f = Future.ready(1)
    assert as_future(f) is f


async def test_collect_accepts_asyncio_awaitables() -> None:
    async def two() -> int:
        return 2

    result = collect(Future.ready(1), two())
    assert await asyncio.wait_for(_aw(result), 2) == [1, 2]


def test_module_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(libproc.future)
    assert tried > 0
    assert failures == 0
