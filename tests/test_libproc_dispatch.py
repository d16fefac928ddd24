"""Local dispatch as it is made fast: one object per dispatch, an awaited dispatch to an idle
process run at once on the awaiting task. Every semantic of the slower path must hold."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import pytest

import libproc
from libproc import (
    UPID,
    Clock,
    DeadlockError,
    Future,
    FutureAbandonedError,
    FutureDiscardedError,
    Process,
    testing,
)
from libproc.errors import ProcessNotFoundError
from libproc.process import DISPATCH, Dispatch, set_filter

pytestmark = pytest.mark.timeout(60)

caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("caller_var", default="unset")


class Recorder(Process):
    """Writes every event it handles into `log`, in order."""

    def __init__(self) -> None:
        super().__init__(prefix="recorder")
        self.log: list[Any] = []

    def initialize(self) -> None:
        self.install("m", lambda sender, body: self.log.append(("message", body)))
        self.route("/r", self._route)

    def _route(self, request: Any) -> str:
        self.log.append("http")
        return "ok"

    def exited(self, pid: UPID) -> None:
        self.log.append(("exited", pid.id))

    def note(self, what: Any) -> Any:
        self.log.append(("dispatch", what))
        return what

    def where(self) -> Any:
        """Who runs this: the current process as libproc sees it, and the current task."""
        return libproc.defer(lambda: None).pid, asyncio.current_task()

    def set_var(self) -> str:
        caller_var.set("set by the handler")
        return caller_var.get()

    async def slow(self, gate: asyncio.Event) -> str:
        self.log.append("slow start")
        await gate.wait()
        self.log.append("slow end")
        return "slow"

    def fail(self) -> None:
        raise ValueError("refused")


class Louder(Recorder):
    def note(self, what: Any) -> Any:
        self.log.append(("louder", what))
        return f"{what}!"


@pytest.fixture
async def rec(runtime: UPID) -> Recorder:
    proc = Recorder()
    libproc.spawn(proc)
    await Clock.settle()
    return proc


def test_a_dispatch_sets_every_slot_of_a_future() -> None:
    """Dispatch.__init__ inlines Future.__init__: a slot added to Future must be set there too."""
    plain: Future[Any] = Future(False)
    call = Dispatch(Process("unspawned"), print, (), None, False)
    for slot in Future.__slots__:
        if slot == "__weakref__":
            continue
        want = getattr(plain, slot)
        got = getattr(call, slot)  # AttributeError here: Dispatch.__init__ misses the slot
        assert got == want, slot
    assert call._target is not None and plain._target is None  # a slot of Dispatch only


async def test_the_event_filter_sees_a_dispatch_with_its_keywords(rec: Recorder) -> None:
    """A dispatch keeps (args, kwargs) in one slot and whether it is a method in a flag; the
    filter still sees the bound method, the arguments and the keywords apart."""
    seen: list[tuple[Any, ...]] = []

    def record(proc: Process, event: Any) -> bool:
        if event[0] == DISPATCH:
            seen.append(event[1:4])
        return False

    set_filter(record)
    try:
        assert await libproc.dispatch(rec.pid, Recorder.note, what="kw") == "kw"
        assert await libproc.dispatch(rec.pid, Recorder.note, "positional") == "positional"
        assert await libproc.dispatch(rec.pid, lambda a, b=0: a + b, 1, b=2) == 3
    finally:
        set_filter(None)
    assert seen[0] == (rec.note, (), {"what": "kw"})
    assert seen[1] == (rec.note, ("positional",), {})
    assert seen[2][1:] == ((1,), {"b": 2})


async def test_a_copy_of_the_pid_reaches_the_process_and_another_address_does_not(
        rec: Recorder) -> None:
    """dispatch short-cuts the look-up for a process's own UPID object: an equal copy still
    reaches it, the same id at another port is not this process."""
    copy = UPID.parse(str(rec.pid))
    assert copy is not rec.pid
    assert await libproc.dispatch(copy, Recorder.note, "copy") == "copy"
    elsewhere = UPID(rec.pid.id, rec.pid.host, rec.pid.port % 65535 + 1)
    with pytest.raises(ProcessNotFoundError):
        await libproc.dispatch(elsewhere, Recorder.note, "elsewhere")
    assert rec.log == [("dispatch", "copy")]


async def test_a_burst_of_dispatches_runs_in_order_with_every_result(rec: Recorder) -> None:
    futures = [libproc.dispatch(rec.pid, Recorder.note, i) for i in range(10_000)]
    assert await futures[-1] == 9_999
    assert [f.get() for f in futures] == list(range(10_000))
    assert rec.log == [("dispatch", i) for i in range(10_000)]


async def test_an_awaited_dispatch_to_an_idle_process_still_yields_to_the_loop(
        rec: Recorder) -> None:
    ran: list[str] = []
    asyncio.get_running_loop().call_soon(ran.append, "other callback")
    assert await libproc.dispatch(rec.pid, Recorder.note, 1) == 1
    assert ran == ["other callback"]  # the awaiting task gave the loop a turn


async def test_an_awaited_dispatch_runs_as_the_process_not_as_the_caller(rec: Recorder) -> None:
    current, task = await libproc.dispatch(rec.pid, Recorder.where)
    assert current == rec.pid
    assert task is asyncio.current_task()  # run at once on the awaiting task
    # The caller is outside any process again.
    assert libproc.defer(lambda: None).pid != rec.pid


async def test_context_variables_set_by_an_awaited_dispatch_stay_with_it(rec: Recorder) -> None:
    caller_var.set("the caller's")
    assert await libproc.dispatch(rec.pid, Recorder.set_var) == "set by the handler"
    assert caller_var.get() == "the caller's"


async def test_mailbox_order_of_messages_dispatches_http_and_exited(
        runtime: UPID, rec: Recorder) -> None:
    from tests.test_libproc_http import get  # a plain HTTP client of that module

    rec.send(rec.pid, "m", b"1")
    first = libproc.dispatch(rec.pid, Recorder.note, "a")
    testing.inject_exited(UPID("gone", "127.0.0.1", 1), rec.pid)
    rec.send(rec.pid, "m", b"2")
    await first  # not first in the mailbox: waits its turn
    status, _, body = await get(runtime.port, f"/{rec.id}/r")
    assert (status, body) == (200, b"ok")
    await libproc.dispatch(rec.pid, Recorder.note, "b")
    assert rec.log == [("message", b"1"), ("dispatch", "a"), ("exited", "gone"),
                       ("message", b"2"), "http", ("dispatch", "b")]


async def test_a_dispatch_made_first_runs_first_even_when_awaited_later(rec: Recorder) -> None:
    first = libproc.dispatch(rec.pid, Recorder.note, "first")
    rec.send(rec.pid, "m", b"after")
    second = libproc.dispatch(rec.pid, Recorder.note, "second")
    assert await second == "second"
    assert first.get() == "first"
    assert rec.log == [("dispatch", "first"), ("message", b"after"), ("dispatch", "second")]


async def test_events_queued_behind_an_inline_dispatch_run_after_it(rec: Recorder) -> None:
    first = libproc.dispatch(rec.pid, Recorder.note, "first")
    rec.send(rec.pid, "m", b"behind")
    later = libproc.dispatch(rec.pid, Recorder.note, "later")
    assert await first == "first"  # at the head: run at once
    assert await later == "later"
    assert rec.log == [("dispatch", "first"), ("message", b"behind"), ("dispatch", "later")]


async def test_an_inline_coroutine_dispatch_holds_the_mailbox_until_done(rec: Recorder) -> None:
    gate = asyncio.Event()
    slow = libproc.dispatch(rec.pid, Recorder.slow, gate)
    after = libproc.dispatch(rec.pid, Recorder.note, "after")
    waiting = asyncio.ensure_future(_await(slow))
    await Clock.settle()
    assert rec.log == ["slow start"]
    assert after.is_pending()
    gate.set()
    assert await waiting == "slow"
    assert await after == "after"
    assert rec.log == ["slow start", "slow end", ("dispatch", "after")]


async def test_a_coroutine_handler_awaiting_a_dispatch_to_itself_raises_deadlock(
        rec: Recorder) -> None:
    async def selfish() -> str:
        try:
            await libproc.dispatch(rec.pid, Recorder.note, "never")
        except DeadlockError as exc:
            return str(exc)
        return "no deadlock error"

    assert "awaited a dispatch to itself" in await libproc.dispatch(rec.pid, selfish)


async def test_a_dispatch_awaited_inside_a_handler_of_its_process_waits_its_turn(
        rec: Recorder) -> None:
    """Serial execution: a handler that drives an await of a dispatch to its own process by
    hand (as an eager task would) does not run that dispatch in the middle of itself."""
    seen: list[Any] = []

    def handler() -> None:
        inner = libproc.dispatch(rec.pid, Recorder.note, "inner")
        steps = inner.__await__()
        try:
            seen.append(next(steps))  # it waits: an asyncio future to wake it
        except StopIteration:
            seen.append("ran inline")
        seen.append(list(rec.log))
        steps.close()

    await libproc.dispatch(rec.pid, handler)
    await Clock.settle()
    assert seen[0] != "ran inline"
    assert seen[1] == []
    assert rec.log == [("dispatch", "inner")]


async def test_terminate_discards_a_queued_dispatch_before_its_await(rec: Recorder) -> None:
    call = libproc.dispatch(rec.pid, Recorder.note, "never")
    libproc.terminate(rec.pid)  # injected ahead of the dispatch
    with pytest.raises(FutureDiscardedError):
        await call
    assert call.is_discarded()
    assert ("dispatch", "never") not in rec.log


async def test_terminate_without_inject_lets_the_awaited_dispatch_run(rec: Recorder) -> None:
    call = libproc.dispatch(rec.pid, Recorder.note, "runs")
    libproc.terminate(rec.pid, inject=False)
    assert await call == "runs"
    assert await libproc.wait(rec.pid)


async def test_a_failing_dispatch_fails_its_future_and_the_process_carries_on(
        rec: Recorder) -> None:
    with pytest.raises(ValueError, match="refused"):
        await libproc.dispatch(rec.pid, Recorder.fail)
    assert await libproc.dispatch(rec.pid, Recorder.note, "still here") == "still here"


async def test_virtual_dispatch_runs_the_override(runtime: UPID) -> None:
    louder = Louder()
    libproc.spawn(louder)
    assert await libproc.dispatch(louder.pid, Recorder.note, "hi") == "hi!"
    assert louder.log == [("louder", "hi")]


async def test_keyword_arguments_names_and_plain_callables(rec: Recorder) -> None:
    assert await libproc.dispatch(rec.pid, Recorder.note, what="kw") == "kw"
    assert await libproc.dispatch(rec.pid, "note", "by name") == "by name"
    assert await libproc.dispatch(rec.pid, lambda a, b=0: a + b, 1, b=2) == 3
    assert await libproc.dispatch(rec.pid, rec.note, "bound") == "bound"


async def test_drop_dispatch_abandons_it_and_future_dispatch_sees_the_base_function(
        runtime: UPID) -> None:
    louder = Louder()
    libproc.spawn(louder)
    try:
        seen = testing.future_dispatch(louder.pid, Recorder.note)
        assert await libproc.dispatch(louder.pid, Louder.note, "seen") == "seen!"
        assert seen.is_ready()
        dropped = testing.drop_dispatch(louder.pid, "note")
        call = libproc.dispatch(louder.pid, Recorder.note, "dropped")
        assert dropped.is_ready()
        assert call.is_abandoned()
        with pytest.raises(FutureAbandonedError):
            await call
    finally:
        testing.reset()
    assert louder.log == [("louder", "seen")]


async def test_a_dispatch_does_not_keep_its_arguments_once_it_has_run(rec: Recorder) -> None:
    class Big:
        pass

    arg = Big()
    ref = weakref.ref(arg)
    call = libproc.dispatch(rec.pid, lambda big: None, arg)
    del arg
    await call
    gc.collect()
    assert ref() is None  # the Future lives on, its argument does not
    assert call.is_ready()


async def test_a_dispatch_to_a_process_that_is_gone_fails(rec: Recorder) -> None:
    libproc.terminate(rec.pid)
    await libproc.wait(rec.pid)
    with pytest.raises(libproc.ProcessNotFoundError):
        await libproc.dispatch(rec.pid, Recorder.note, "late")


async def _await(f: Future[Any]) -> Any:
    return await f


# -- what a backlog costs the garbage collector ------------------------------------------


async def _tracked_growth(rec: Recorder, fill: Any) -> int:
    """How many more objects the garbage collector tracks once `fill()` has queued its
    events behind a running coroutine handler (they wait in the mailbox)."""
    gate = asyncio.Event()
    held = libproc.dispatch(rec.pid, Recorder.slow, gate)
    await Clock.settle()
    gc.collect()
    before = len(gc.get_objects())
    kept = fill()
    growth = len(gc.get_objects()) - before
    gate.set()
    assert await held == "slow"
    del kept
    return growth


async def test_queued_messages_add_nothing_for_the_collector_to_trace(rec: Recorder) -> None:
    body = b"x" * 32

    def fill() -> None:
        for _ in range(10_000):
            rec.send(rec.pid, "m", body)

    assert await _tracked_growth(rec, fill) < 100  # a tuple a message would be 10,000
    await Clock.settle()
    assert len(rec.log) == 10_002 and rec.log[-1] == ("message", body)


async def test_a_queued_dispatch_is_one_object_for_the_collector(rec: Recorder) -> None:
    def fill() -> list[Future[Any]]:
        return [libproc.dispatch(rec.pid, Recorder.note, 1) for _ in range(10_000)]

    growth = await _tracked_growth(rec, fill)
    assert 10_000 <= growth < 11_000  # tuple + Future + bound method would be 30,000
    await Clock.settle()
    assert rec.log[-1] == ("dispatch", 1)


async def test_terminate_with_messages_dispatches_and_requests_queued(
        runtime: UPID, rec: Recorder) -> None:
    from tests.test_libproc_http import get

    gate = asyncio.Event()
    held = libproc.dispatch(rec.pid, Recorder.slow, gate)
    await Clock.settle()
    rec.send(rec.pid, "m", b"dropped")
    queued = libproc.dispatch(rec.pid, Recorder.note, "discarded")
    request = asyncio.ensure_future(get(runtime.port, f"/{rec.id}/r"))
    for _ in range(50):  # until the request waits in the mailbox
        await asyncio.sleep(0.01)
        if any(e["type"] == "HTTP" for e in rec._describe_events()):
            break
    rec.send(rec.pid, "m", b"dropped too")
    assert [e["type"] for e in rec._describe_events()] == ["MESSAGE", "DISPATCH", "HTTP",
                                                           "MESSAGE"]
    libproc.terminate(rec.pid)
    gate.set()
    assert await held == "slow"
    with pytest.raises(FutureDiscardedError):
        await queued
    status, _, _ = await request
    assert status == 503
    assert await libproc.wait(rec.pid)
    assert not rec._mailbox
    assert ("message", b"dropped") not in rec.log and "http" not in rec.log
