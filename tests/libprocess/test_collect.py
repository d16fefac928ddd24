"""libprocess's collect_tests.cpp (CollectTest.*, AwaitTest.*) against libproc's `collect`
and `await_`.

Every case has a meaning in Python and is ported. libprocess's `collect(f1, f2)` yields a
tuple and `collect(vector)` a vector; libproc's `collect` yields a list either way.
`await_(future)` of one future is READY with that future (libprocess's `await(future)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libproc import Future, Promise, await_, collect
from libprocess.support import await_discarded, await_failed, await_ready


# CollectTest.Ready
async def test_collect_is_ready_with_the_values_in_input_order() -> None:
    empty = collect([])
    assert await await_ready(empty) == []

    promises: list[Promise[int]] = [Promise() for _ in range(4)]
    futures = [p.future for p in promises]
    # Set them out of order.
    promises[3].set(4)
    promises[1].set(2)
    promises[0].set(1)
    promises[2].set(3)

    assert await await_ready(collect(futures)) == [1, 2, 3, 4]


# CollectTest.Failure
async def test_collect_fails_when_an_input_fails_or_is_discarded() -> None:
    promise1: Promise[int] = Promise()
    promise2: Promise[bool] = Promise()
    both = collect(promise1.future, promise2.future)
    assert both.is_pending()
    promise1.set(42)
    assert both.is_pending()
    promise2.set(True)
    assert await await_ready(both) == [42, True]

    promise3: Promise[bool] = Promise()
    failing = collect(promise1.future, promise3.future)
    assert failing.is_pending()
    promise3.fail("failure")
    assert await await_failed(failing) == "failure"

    promise4: Promise[bool] = Promise()
    discarded = collect(promise1.future, promise4.future)
    assert discarded.is_pending()
    promise4.discard()
    await await_failed(discarded)


async def _check_discard_propagation(combine: Callable[..., Future[Any]]) -> None:
    """Discarding the combined future discards both inputs (which honour it), then itself."""
    promise1: Promise[int] = Promise()
    promise2: Promise[bool] = Promise()
    promise1.future.on_discard(promise1.discard)
    promise2.future.on_discard(promise2.discard)
    result = combine(promise1.future, promise2.future)
    result.discard()
    await await_discarded(result)
    await await_discarded(promise1.future)
    await await_discarded(promise2.future)


# CollectTest.DiscardPropagation
async def test_discarding_collect_discards_its_inputs_and_itself() -> None:
    await _check_discard_propagation(collect)


# CollectTest.AbandonedPropagation
async def test_an_abandoned_input_abandons_collect() -> None:
    promise: Promise[int] = Promise()

    def rescue(f: Future[list[int]]) -> Any:
        return [42] if f.is_abandoned() else f

    future = collect(promise.future).recover(rescue).then(lambda values: values[0])
    del promise
    assert await await_ready(future) == 42


# AwaitTest.Success
async def test_await_is_ready_with_the_futures_in_input_order() -> None:
    assert await await_ready(await_([])) == []

    promises: list[Promise[int]] = [Promise() for _ in range(4)]
    futures = [p.future for p in promises]
    promises[3].set(4)
    promises[1].set(2)
    promises[0].set(1)
    promises[2].set(3)

    result = await await_ready(await_(futures))
    assert len(result) == len(futures)
    for i, f in enumerate(result, start=1):
        assert f.is_ready()
        assert f.get() == i


# AwaitTest.Failure
async def test_await_is_ready_even_when_an_input_fails() -> None:
    promise1: Promise[int] = Promise()
    promise2: Promise[bool] = Promise()
    result = await_(promise1.future, promise2.future)
    assert result.is_pending()
    promise1.set(42)
    assert result.is_pending()
    promise2.fail("failure message")
    first, second = await await_ready(result)
    assert first.is_ready() and first.get() == 42
    assert second.is_failed()


# AwaitTest.Discarded
async def test_await_is_ready_even_when_an_input_is_discarded() -> None:
    promise1: Promise[int] = Promise()
    promise2: Promise[bool] = Promise()
    result = await_(promise1.future, promise2.future)
    promise1.set(42)
    assert result.is_pending()
    promise2.discard()
    first, second = await await_ready(result)
    assert first.get() == 42
    assert second.is_discarded()


# AwaitTest.DiscardPropagation
async def test_discarding_await_discards_its_inputs_and_itself() -> None:
    await _check_discard_propagation(await_)


# AwaitTest.AbandonedPropagation
async def test_an_abandoned_input_abandons_await() -> None:
    promise: Promise[int] = Promise()

    def rescue(f: Future[list[Future[int]]]) -> Any:
        return [Future.ready(42), Future.ready(0)] if f.is_abandoned() else f

    future = (await_(promise.future, Future())
              .recover(rescue)
              .then(lambda futures: futures[0].then(lambda i: i)))
    del promise
    assert await await_ready(future) == 42


def _foo(inner: Future[int]) -> Future[str]:
    """`await(bar()).then(...)`: break out of a chain whose inner future may never end."""
    return await_(inner).then(lambda f: f.then(str))


# AwaitTest.AwaitSingleDiscard
async def test_discarding_await_of_one_future_breaks_out_of_the_chain() -> None:
    promise: Promise[int] = Promise()  # never honours a discard
    future = _foo(promise.future)
    future.discard()
    await await_discarded(future)
    assert promise.future.has_discard()


# AwaitTest.AwaitSingleAbandon
async def test_abandoning_the_future_of_await_of_one_future_abandons_the_chain() -> None:
    promise: Promise[int] = Promise()
    future = _foo(promise.future).recover(
        lambda f: "hello" if f.is_abandoned() else f)
    del promise
    assert await await_ready(future) == "hello"
