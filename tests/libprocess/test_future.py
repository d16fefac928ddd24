"""libprocess's future_tests.cpp (FutureTest.*) against libproc's Future and Promise.

Each test names the C++ case it ports. C++-only cases, not ported:

- FutureTest.FromTry, FutureTest.FromTryFuture: build a Future from stout's `Try<T>` (and
  `Try<Future<T>>`) by implicit conversion. Python has no Try type; a value or an exception
  becomes a future with `Future.ready(v)` / `Future.failed(exc)` (FutureTest.Future, Repair).
- FutureTest.ArrowOperator: C++'s `operator->` on a READY future; Python reads `get()`.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from libproc import Clock, Future, Promise, select, undiscardable
from libprocess.support import (
    await_abandoned,
    await_discarded,
    await_failed,
    await_ready,
)

HOUR = 3600.0


# FutureTest.Future
def test_a_set_promise_makes_its_future_ready() -> None:
    promise: Promise[bool] = Promise()
    promise.set(True)
    assert promise.future.is_ready()
    assert promise.future.get() is True


# FutureTest.Stringify
def test_a_future_prints_as_libprocess_stringifies_it() -> None:
    assert str(Future()) == "Abandoned"

    promise: Promise[bool] = Promise()
    future = promise.future
    del promise
    assert str(future) == "Abandoned"

    promise = Promise()
    future = promise.future
    future.discard()
    del promise
    assert str(future) == "Abandoned (with discard)"

    promise = Promise()
    assert str(promise.future) == "Pending"
    promise.future.discard()
    assert str(promise.future) == "Pending (with discard)"

    promise = Promise()
    promise.set(True)
    assert str(promise.future) == "Ready"

    promise = Promise()
    promise.future.discard()
    promise.set(True)
    assert str(promise.future) == "Ready (with discard)"

    promise = Promise()
    promise.fail("Failure")
    assert str(promise.future) == "Failed: Failure"

    promise = Promise()
    promise.future.discard()
    promise.fail("Failure")
    assert str(promise.future) == "Failed (with discard): Failure"

    promise = Promise()
    promise.discard()
    assert str(promise.future) == "Discarded"

    promise = Promise()
    promise.future.discard()
    promise.discard()
    assert str(promise.future) == "Discarded (with discard)"


# FutureTest.Associate
def test_an_associated_promise_takes_the_other_futures_outcome() -> None:
    promise1: Promise[bool] = Promise()
    promise1.associate(Future.ready(True))
    assert promise1.future.is_ready()
    assert promise1.future.get() is True

    promise2: Promise[bool] = Promise()
    promise2_: Promise[bool] = Promise()
    promise2.associate(promise2_.future)
    promise2_.discard()
    assert promise2.future.is_discarded()

    promise3: Promise[bool] = Promise()
    promise4: Promise[bool] = Promise()
    promise3.associate(promise4.future)
    promise4.fail("associate")
    assert promise3.future.is_failed()
    assert promise3.future.failure() == "associate"

    # 'discard' versus 'discarded' after association.
    promise5: Promise[bool] = Promise()
    future3: Future[bool] = Future()
    promise5.associate(future3)
    assert not future3.is_discarded()
    promise5.future.discard()
    assert future3.has_discard()

    promise6: Promise[bool] = Promise()
    promise7: Promise[bool] = Promise()
    promise6.associate(promise7.future)
    promise7.discard()
    assert promise6.future.is_discarded()


# FutureTest.OnAny
def test_on_any_of_a_ready_future_runs_at_once() -> None:
    seen: list[bool] = []

    def on_any(f: Future[bool]) -> None:
        assert f.is_ready()
        seen.append(f.get())

    Future.ready(True).on_any(on_any)
    assert seen == [True]


# FutureTest.Then
def test_then_takes_a_function_returning_a_future_or_a_value() -> None:
    promise: Promise[int] = Promise()
    promise.set(42)

    def itoa1(i: int) -> Future[str]:
        return Future.ready(str(i))

    def itoa2(i: int) -> str:
        return str(i)

    future = promise.future.then(itoa1)
    assert future.is_ready()
    assert future.get() == "42"

    future = promise.future.then(itoa2)
    assert future.is_ready()
    assert future.get() == "42"


# FutureTest.CallableOnce
def test_each_callback_runs_once_and_only_for_its_state() -> None:
    promise: Promise[None] = Promise()
    promise.set(None)

    owned = [42]
    future: Future[Any] = promise.future.then(lambda _: owned.pop())
    assert future.is_ready()
    assert future.get() == 42
    assert owned == []  # the callback ran exactly once

    n = 0

    def add(k: int) -> Any:
        def callback(*_: Any) -> None:
            nonlocal n
            n += k

        return callback

    future = (promise.future
              .on_ready(add(1))
              .on_any(add(10))
              .on_failed(add(100))
              .on_discard(add(1000))
              .on_discarded(add(10000))
              .then(lambda _: n))
    assert future.is_ready()
    assert future.get() == 11


def _repair(future: Future[int]) -> Future[int]:
    assert future.is_failed()
    assert future.failure() == "Failure"
    return Future.ready(43)


# FutureTest.Repair
async def test_repair_runs_only_for_a_failed_future() -> None:
    promise1: Promise[int] = Promise()
    future1 = promise1.future.repair(_repair)
    assert future1.is_pending()
    promise1.set(42)  # so 'repair' does not run
    assert await await_ready(future1) == 42

    promise2: Promise[int] = Promise()
    future2 = promise2.future.repair(_repair)
    assert future2.is_pending()
    promise2.fail("Failure")  # so 'repair' runs and returns 43
    assert await await_ready(future2) == 43


def _after(executed: list[bool]) -> Any:
    def fn(future: Future[None]) -> Future[None]:
        assert future.has_discard()
        executed.append(True)
        return Future.failed("Failure")

    return fn


# FutureTest.After1
async def test_after_runs_its_callback_when_the_future_is_still_pending() -> None:
    Clock.pause()
    executed: list[bool] = []
    future = Future().after(42 * HOUR, _after(executed))
    assert future.is_pending()  # pending until 'after' fires

    Clock.advance(21 * HOUR)  # only halfway
    assert future.is_pending()

    future.discard()  # even a discard keeps it pending
    assert future.is_pending()

    Clock.advance(21 * HOUR)  # all the way: the callback fails it
    assert await await_failed(future) == "Failure"
    assert executed == [True]
    Clock.resume()


# FutureTest.After2
async def test_completing_the_future_keeps_the_after_callback_from_running() -> None:
    Clock.pause()
    executed: list[bool] = []
    promise: Promise[None] = Promise()
    future = promise.future.after(42 * HOUR, _after(executed))
    assert future.is_pending()

    Clock.advance(21 * HOUR)
    assert future.is_pending()

    future.discard()
    assert future.is_pending()

    promise.set(None)  # the timer is cancelled and the future completes
    await await_ready(future)

    Clock.advance(21 * HOUR)
    assert executed == []
    Clock.resume()


# FutureTest.After3
async def test_after_does_not_keep_the_original_future_alive() -> None:
    future: Future[None] = Future()
    weak_future = weakref.ref(future)
    assert weak_future() is not None

    Clock.pause()

    def discard_it(f: Future[None]) -> None:
        f.discard()
        return None

    future = future.after(0.001, discard_it)  # the original goes out of scope here
    Clock.advance(0.001)
    await Clock.settle()
    await await_ready(future)

    gc.collect()
    assert weak_future() is None
    assert not future.has_discard()


def _second(b: bool) -> Future[str]:
    return Future.ready("true" if b else "false")


def _third(s: str) -> Future[str]:
    return Future.ready(s)


# FutureTest.Chain
async def test_a_chain_passes_values_failures_and_discards_along() -> None:
    s = Future.ready(True).then(_second).then(_third)
    assert await await_ready(s) == "true"

    s = Future.failed("The value is not positive (or zero)").then(_second).then(_third)
    await await_failed(s)

    promise: Promise[bool] = Promise()
    s = promise.future.then(_second).then(_third)
    assert s.is_pending()
    promise.discard()
    await await_discarded(s)


def _discard_chain() -> tuple[Promise[bool], Promise[int], list[bool], Future[Any]]:
    promise1: Promise[bool] = Promise()
    promise2: Promise[int] = Promise()
    executed: list[bool] = []

    def inner2(_: Any) -> Future[int]:
        executed.append(True)
        return promise2.future

    future = Future.ready("hello world").then(lambda _: promise1.future).then(inner2)
    assert future.is_pending()

    future.discard()
    # Still pending, even though it was discarded.
    assert future.has_discard()
    assert future.is_pending()
    # The future returned by the callback that already ran got the discard ...
    assert promise1.future.has_discard()
    # ... the one of the callback that has not run yet did not.
    assert not promise2.future.has_discard()
    return promise1, promise2, executed, future


# FutureTest.Discard1
async def test_a_discard_completes_the_chain_only_when_a_promise_discards() -> None:
    promise1, promise2, executed, future = _discard_chain()
    assert promise1.discard()
    await await_discarded(future)
    assert executed == []  # the last callback never ran
    assert promise2.future.is_pending()


# FutureTest.Discard2
async def test_a_value_after_a_discard_does_not_run_the_next_callback() -> None:
    promise1, promise2, executed, future = _discard_chain()
    # `then` does not continue a chain once a discard was requested: the outer future is
    # DISCARDED rather than running the last callback.
    assert promise1.set(True)
    await await_discarded(future)
    assert executed == []
    assert promise2.future.is_pending()


# FutureTest.Discard3
async def test_a_failure_after_a_discard_fails_the_chain() -> None:
    promise1, promise2, executed, future = _discard_chain()
    assert promise1.fail("failure message")
    await await_failed(future)
    assert executed == []
    assert promise2.future.is_pending()


# FutureTest.Select
async def test_select_is_ready_with_the_first_ready_future() -> None:
    promise1: Promise[int] = Promise()
    promise2: Promise[int] = Promise()
    promise3: Promise[int] = Promise()
    promise4: Promise[int] = Promise()
    futures = {promise1.future, promise2.future, promise3.future, promise4.future}

    promise1.set(42)
    future = select(futures)
    chosen = await await_ready(future)
    assert chosen is promise1.future
    assert await await_ready(chosen) == 42

    futures.remove(promise1.future)
    future = select(futures)
    assert future.is_pending()
    future.discard()
    await await_discarded(future)


# FutureTest.UndiscardableFuture
async def test_undiscardable_keeps_a_discard_from_its_future() -> None:
    promise: Promise[int] = Promise()
    f = undiscardable(promise.future)
    f.discard()
    assert f.has_discard()
    assert not promise.future.has_discard()
    promise.set(42)
    assert await await_ready(f) == 42


# FutureTest.UndiscardableLambda
async def test_undiscardable_callable_keeps_a_discard_from_what_it_returns() -> None:
    promise: Promise[int] = Promise()
    f = Future.ready(2).then(undiscardable(
        lambda multiplier: promise.future.then(lambda i: i * multiplier)))
    f.discard()
    assert f.has_discard()
    assert not promise.future.has_discard()
    promise.set(42)
    assert await await_ready(f) == 84


# FutureTest.Abandoned
async def test_a_future_without_promise_or_whose_promise_is_gone_is_abandoned() -> None:
    await await_abandoned(Future())

    promise: Promise[int] = Promise()
    future = promise.future
    assert not future.is_abandoned()
    del promise
    await await_abandoned(future)


# FutureTest.AbandonedChain
async def test_abandonment_flows_down_a_chain() -> None:
    promise: Promise[int] = Promise()
    future = promise.future.then(lambda _: None).then(lambda _: "hello world")
    del promise
    await await_abandoned(future)


def _hello_then_recover(future: Future[int]) -> Future[str]:
    return future.then(lambda _: "hello").recover(lambda _: "world")


# FutureTest.RecoverDiscarded
async def test_recover_replaces_a_discarded_future() -> None:
    promise: Promise[int] = Promise()
    future = _hello_then_recover(promise.future)
    promise.discard()
    assert await await_ready(future) == "world"


# FutureTest.RecoverFailed
async def test_recover_replaces_a_failed_future() -> None:
    promise: Promise[int] = Promise()
    future = _hello_then_recover(promise.future)
    promise.fail("Failure")
    assert await await_ready(future) == "world"


# FutureTest.RecoverAbandoned
async def test_recover_replaces_an_abandoned_future() -> None:
    promise: Promise[int] = Promise()
    future = _hello_then_recover(promise.future)
    del promise
    assert await await_ready(future) == "world"


# FutureTest.RecoverDiscard
async def test_a_discard_does_not_pass_through_recover_but_can_later() -> None:
    promise1: Promise[int] = Promise()
    promise2: Promise[str] = Promise()
    promise3: Promise[str] = Promise()
    promise4: Promise[str] = Promise()

    future = (promise1.future
              .then(lambda _: "hello")
              .recover(lambda _: promise2.future.then(
                  lambda _: promise3.future.then(lambda _: promise4.future))))

    future.discard()
    promise1.discard()
    assert not promise2.future.has_discard()

    promise2.set("not world")
    assert not promise3.future.has_discard()

    promise3.set("also not world")
    assert not promise4.future.has_discard()

    future.discard()
    assert promise4.future.has_discard()

    promise4.set("world")
    assert await await_ready(future) == "world"
