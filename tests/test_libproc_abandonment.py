"""Abandonment and the combinators added for libprocess fidelity, beyond the ported suite:
what libproc does where libprocess would block or crash (awaiting an abandoned future, a
Promise dropped on another thread, bad loop bodies, bad defer calls)."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

import libproc
from libproc import (
    UPID,
    Break,
    Continue,
    Future,
    FutureAbandonedError,
    FutureDiscardedError,
    NotRunningError,
    Process,
    ProcessNotFoundError,
    Promise,
    _2,
    async_,
    collect,
    defer,
    loop,
    select,
)
from waiting import within

pytestmark = pytest.mark.timeout(30)


async def test_awaiting_an_abandoned_future_raises_instead_of_hanging() -> None:
    promise: Promise[int] = Promise()
    future = promise.future
    waiter = asyncio.ensure_future(within(future))
    await asyncio.sleep(0)
    del promise
    with pytest.raises(FutureAbandonedError, match="abandoned"):
        await waiter
    with pytest.raises(FutureAbandonedError):
        future.get()
    assert issubclass(FutureAbandonedError, FutureDiscardedError)
    with pytest.raises(FutureAbandonedError):
        await Future()


async def test_abandonment_callbacks_of_a_dropped_promise_run_on_the_next_loop_turn() -> None:
    promise: Promise[int] = Promise()
    calls: list[str] = []
    promise.future.on_abandoned(lambda: calls.append("abandoned"))
    future = promise.future
    del promise
    assert future.is_abandoned()  # flagged at once ...
    assert calls == []  # ... callbacks never run inside whatever the collector interrupted
    await asyncio.sleep(0)
    assert calls == ["abandoned"]
    future.on_abandoned(lambda: calls.append("late"))  # runs at once now
    assert calls == ["abandoned", "late"]


async def test_a_promise_dropped_on_another_thread_runs_its_callbacks_on_the_loop(
    runtime: UPID,
) -> None:
    holder: list[Promise[int]] = [Promise()]
    future = holder[0].future
    seen: list[int] = []
    done = asyncio.Event()

    def on_abandoned() -> None:
        seen.append(threading.get_ident())
        done.set()

    future.on_abandoned(on_abandoned)
    thread = threading.Thread(target=holder.clear)  # the last reference dies there
    thread.start()
    thread.join(10)
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [threading.get_ident()]


async def test_a_promise_in_a_reference_cycle_is_abandoned_when_collected() -> None:
    class Holder:
        def __init__(self) -> None:
            self.promise: Promise[int] = Promise()
            self.me = self

    holder = Holder()
    future = holder.promise.future
    del holder
    gc.collect()
    assert future.is_abandoned()


def test_a_completed_or_associated_promise_is_not_abandoned_when_dropped() -> None:
    done: Promise[int] = Promise()
    done.set(1)
    completed = done.future
    del done
    assert not completed.is_abandoned() and completed.get() == 1

    inner: Promise[int] = Promise()
    outer: Promise[int] = Promise()
    outer.associate(inner.future)
    followed = outer.future
    del outer
    assert not followed.is_abandoned()  # its outcome is inner's
    inner.set(5)
    assert followed.get() == 5


async def test_collect_stops_once_abandoned_and_select_gives_up_when_no_input_can_win(
) -> None:
    dropped: Promise[int] = Promise()
    kept: Promise[int] = Promise()
    both = collect(dropped.future, kept.future)
    del dropped
    await asyncio.sleep(0)
    assert both.is_abandoned()
    kept.set(2)
    assert both.is_pending()  # nothing completes an abandoned collect

    a: Promise[int] = Promise()
    b: Promise[int] = Promise()
    chosen = select([a.future, b.future])
    a.fail("no")
    assert not chosen.is_abandoned()
    b.discard()
    assert chosen.is_abandoned()
    assert select([]).is_abandoned()


def test_undiscardable_of_an_abandoned_future_is_abandoned() -> None:
    assert libproc.undiscardable(Future()).is_abandoned()


async def test_a_loop_body_returning_anything_but_a_control_flow_fails_the_loop() -> None:
    future = loop(lambda: 1, lambda _: True)
    assert future.is_failed()
    assert "Continue() or Break(value)" in future.failure()


async def test_a_raising_step_fails_the_loop_and_an_abandoned_step_abandons_it() -> None:
    def boom() -> int:
        raise ValueError("no more values")

    failed = loop(boom, lambda _: Continue())
    assert isinstance(failed.exception, ValueError)

    stuck = loop(lambda: Future(), lambda _: Break())
    assert stuck.is_abandoned()


async def test_a_loop_on_a_process_that_is_gone_fails(runtime: UPID) -> None:
    future = loop(lambda: 1, lambda _: Break(), pid=runtime.with_id("nobody"))
    assert future.is_failed()
    assert isinstance(future.exception, ProcessNotFoundError)


async def test_a_long_loop_of_immediate_steps_yields_to_other_tasks() -> None:
    ticks: list[int] = []
    count = iter(range(10_000))

    async def other() -> None:
        for i in range(3):
            ticks.append(i)
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other())
    future = loop(lambda: next(count),
                  lambda i: Break(len(ticks)) if i == 9_999 else Continue())
    assert await within(future) == 3  # the other task ran to its end meanwhile
    await task


async def test_defer_reports_wrong_calls_clearly(runtime: UPID) -> None:
    class Adder(Process):
        def add(self, a: int, b: int) -> int:
            return a + b

    adder = Adder()
    libproc.spawn(adder)
    deferred = defer(adder.pid, Adder.add, 1, _2)
    with pytest.raises(TypeError, match="at least 2 argument"):
        deferred(10)
    assert await within(deferred("ignored", 41)) == 42
    assert "Adder.add" in repr(deferred)
    with pytest.raises(TypeError, match="needs the method"):
        defer(adder.pid)
    with pytest.raises(TypeError, match="a pid and a method, or a callable"):
        defer(42)  # type: ignore[arg-type]


def test_defer_of_a_callable_outside_any_process_needs_the_runtime() -> None:
    with pytest.raises(NotRunningError, match="defer a callable"):
        defer(lambda: None)


async def test_defer_of_a_callable_inside_a_process_runs_in_that_process(runtime: UPID) -> None:
    where: list[Any] = []

    class Host(Process):
        def make(self) -> Any:
            return defer(lambda: where.append(libproc._context.current_pid.get()))

    host = Host()
    libproc.spawn(host)
    deferred = await within(libproc.dispatch(host, Host.make))
    await within(deferred())
    assert where == [host.pid]


async def test_async_fails_with_what_the_function_raised(runtime: UPID) -> None:
    def broken() -> None:
        raise KeyError("missing")

    future = async_(broken)
    with pytest.raises(KeyError):
        await within(future)
    assert future.is_failed()


async def test_an_executor_that_stopped_refuses_new_calls(runtime: UPID) -> None:
    executor = libproc.Executor()
    assert await within(executor.execute(lambda: 1)) == 1
    executor.stop()
    await within(libproc.wait(executor.pid))
    assert isinstance(executor.execute(lambda: 2).exception, ProcessNotFoundError)


async def test_a_loop_with_a_pid_runs_its_steps_in_that_process(runtime: UPID) -> None:
    process = Process(prefix="looper")
    libproc.spawn(process)
    seen: list[Any] = []
    count = iter(range(5))

    def body(i: int) -> Any:
        seen.append(libproc._context.current_pid.get())
        return Continue() if i < 4 else Break(i)

    future = loop(lambda: asyncio.sleep(0, next(count)), body, pid=process.pid)
    assert await within(future) == 4
    assert seen == [process.pid] * 5


async def test_loop_takes_libprocess_argument_order_and_refuses_bad_calls(
    runtime: UPID,
) -> None:
    process = Process(prefix="looper")
    libproc.spawn(process)
    assert await within(loop(process.pid, lambda: 7, lambda i: Break(i))) == 7
    assert await within(loop(None, lambda: 8, lambda i: Break(i))) == 8
    with pytest.raises(TypeError, match="iterate, body"):
        loop(lambda: 1)
    with pytest.raises(TypeError, match="must be callables"):
        loop(1, 2)
