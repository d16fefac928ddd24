"""Processes in one OS process: spawn, dispatch, defer, terminate, wait, links, messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import libproc
from libproc import (
    UPID,
    Clock,
    DeadlockError,
    Future,
    FutureDiscardedError,
    Process,
    ProcessNotFoundError,
    Promise,
    ProtobufProcess,
    metrics,
)
from protos import cluster_pb2 as pb

pytestmark = pytest.mark.timeout(30)


async def within(aw: Any, seconds: float = 5.0) -> Any:
    async def run() -> Any:
        return await aw

    return await asyncio.wait_for(run(), seconds)


class Worker(Process):
    """Records what happens to it, in order."""

    def __init__(self, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id, prefix="worker")
        self.log: list[Any] = []

    def initialize(self) -> None:
        self.log.append("initialize")
        self.install("note", self._note)

    def finalize(self) -> None:
        self.log.append("finalize")

    def exited(self, pid: UPID) -> None:
        self.log.append(("exited", pid))

    def _note(self, sender: UPID, body: bytes) -> None:
        self.log.append(("note", sender, body, self.sender))

    def add(self, a: int, b: int) -> int:
        self.log.append(("add", a, b))
        return a + b

    def fail(self) -> None:
        raise ValueError("worker refused")

    async def slow(self, gate: asyncio.Event) -> str:
        self.log.append("slow start")
        await gate.wait()
        self.log.append("slow end")
        return "slow done"


# -- spawn ----------------------------------------------------------------------------


async def test_spawn_returns_upid_at_this_address_and_initialize_runs_first(
    runtime: UPID,
) -> None:
    w = Worker("alpha")
    pid = libproc.spawn(w)
    assert pid == UPID("alpha", runtime.host, runtime.port)
    assert w.pid == pid
    assert await within(libproc.dispatch(pid, Worker.add, 1, 2)) == 3
    assert w.log == ["initialize", ("add", 1, 2)]
    assert w.state == "running"


async def test_generated_ids_count_up_from_the_prefix(runtime: UPID) -> None:
    a, b = Process(prefix="gen-test"), Process(prefix="gen-test")
    assert (a.id, b.id) == ("gen-test(1)", "gen-test(2)")


async def test_spawning_a_taken_id_or_twice_is_refused(runtime: UPID) -> None:
    w = Worker("dup")
    libproc.spawn(w)
    with pytest.raises(ValueError, match="already runs here"):
        libproc.spawn(Worker("dup"))
    with pytest.raises(ValueError, match="already spawned"):
        libproc.spawn(w)


async def test_spawn_before_start_says_how_to_start() -> None:
    with pytest.raises(libproc.NotRunningError, match="libproc.start"):
        libproc.spawn(Worker())


async def test_pid_of_an_unspawned_process_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="spawn it first"):
        _ = Worker().pid


# -- dispatch -------------------------------------------------------------------------


async def test_dispatch_accepts_class_function_bound_method_name_and_callable(
    runtime: UPID,
) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    results = await within(
        libproc.collect(
            libproc.dispatch(pid, Worker.add, 1, 1),
            libproc.dispatch(w, w.add, 2, 2),
            libproc.dispatch(pid.id, "add", 3, b=3),
            libproc.dispatch(pid, lambda: "lambda ran"),
        )
    )
    assert results == [2, 4, 6, "lambda ran"]


async def test_dispatches_run_in_the_order_sent(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    futures = [libproc.dispatch(pid, Worker.add, i, 0) for i in range(100)]
    assert await within(libproc.collect(futures)) == list(range(100))
    assert [e[1] for e in w.log if isinstance(e, tuple)] == list(range(100))


async def test_dispatch_failure_fails_the_future_and_the_process_carries_on(
    runtime: UPID,
) -> None:
    pid = libproc.spawn(Worker())
    failed = libproc.dispatch(pid, Worker.fail)
    with pytest.raises(ValueError, match="worker refused"):
        await within(failed)
    assert await within(libproc.dispatch(pid, Worker.add, 1, 1)) == 2


async def test_dispatch_of_a_coroutine_method_returns_its_result(runtime: UPID) -> None:
    gate = asyncio.Event()
    gate.set()
    pid = libproc.spawn(Worker())
    assert await within(libproc.dispatch(pid, Worker.slow, gate)) == "slow done"


async def test_dispatch_returning_a_future_takes_its_outcome(runtime: UPID) -> None:
    inner: Promise[str] = Promise()
    f = libproc.dispatch(libproc.spawn(Worker()), lambda: inner.future)
    await Clock.settle()
    assert f.is_pending()
    inner.set("inner value")
    assert f.get() == "inner value"


async def test_dispatch_to_dead_process_fails_future(runtime: UPID) -> None:
    pid = libproc.spawn(Worker())
    libproc.terminate(pid)
    await within(libproc.wait(pid))
    f = libproc.dispatch(pid, Worker.add, 1, 2)
    assert f.is_failed()
    assert isinstance(f.exception, ProcessNotFoundError)
    assert str(pid) in f.failure() and "no live process" in f.failure()
    assert libproc.dispatch("never-spawned", "add", 1, 2).is_failed()


async def test_dispatch_of_an_unknown_method_name_fails(runtime: UPID) -> None:
    f = libproc.dispatch(libproc.spawn(Worker()), "no_such_method")
    assert isinstance(f.exception, AttributeError)
    assert "no_such_method" in f.failure()


async def test_coroutine_handler_blocks_the_mailbox_until_done(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    gate = asyncio.Event()
    slow = libproc.dispatch(pid, Worker.slow, gate)
    fast = libproc.dispatch(pid, Worker.add, 1, 1)
    w.send(pid, "note", b"queued")
    await Clock.settle(max_rounds=50)
    assert w.log == ["initialize", "slow start"]
    assert fast.is_pending()
    gate.set()
    assert await within(fast) == 2
    await Clock.settle()
    assert slow.get() == "slow done"
    assert w.log[2:4] == ["slow end", ("add", 1, 1)]
    assert w.log[4][:3] == ("note", pid, b"queued")


async def test_awaiting_a_dispatch_to_yourself_in_your_handler_raises_deadlock(
    runtime: UPID,
) -> None:
    class SelfAwaiter(Process):
        async def run(self) -> Any:
            return await libproc.dispatch(self.pid, lambda: "unreachable")

    pid = libproc.spawn(SelfAwaiter())
    f = libproc.dispatch(pid, SelfAwaiter.run)
    with pytest.raises(DeadlockError, match="awaited a dispatch to itself"):
        await within(f)


async def test_self_await_in_a_coroutine_message_handler_raises_deadlock(
    runtime: UPID,
) -> None:
    outcome: Promise[Any] = Promise()

    class SelfAwaiter(Process):
        def initialize(self) -> None:
            self.install("go", self._go)

        async def _go(self, sender: UPID, body: bytes) -> None:
            try:
                await libproc.dispatch(self.pid, lambda: "unreachable")
                outcome.set("no error")
            except DeadlockError as exc:
                outcome.set(exc)

    proc = SelfAwaiter()
    pid = libproc.spawn(proc)
    proc.send(pid, "go")
    assert isinstance(await within(outcome.future), DeadlockError)
    assert await within(libproc.dispatch(pid, lambda: "still serving")) == "still serving"


async def test_a_background_task_of_a_process_may_await_a_dispatch_to_it(
    runtime: UPID,
) -> None:
    class Background(Process):
        def __init__(self) -> None:
            super().__init__(prefix="background")
            self.result: Promise[Any] = Promise()

        def initialize(self) -> None:
            asyncio.ensure_future(self._work())  # not a handler: the mailbox stays free

        async def _work(self) -> None:
            try:
                self.result.set(await libproc.dispatch(self.pid, lambda: "got it"))
            except Exception as exc:  # noqa: BLE001
                self.result.fail(exc)

    proc = Background()
    libproc.spawn(proc)
    assert await within(proc.result.future) == "got it"


async def test_message_handler_returning_a_future_does_not_block_the_mailbox(
    runtime: UPID,
) -> None:
    never: Promise[None] = Promise()

    class Returner(Process):
        def initialize(self) -> None:
            self.install("m", lambda sender, body: never.future)

        def ping(self) -> str:
            return "pong"

    proc = Returner()
    pid = libproc.spawn(proc)
    proc.send(pid, "m")
    assert await within(libproc.dispatch(pid, Returner.ping), 2) == "pong"


async def test_handler_exception_is_counted_and_the_process_carries_on(runtime: UPID) -> None:
    class Raiser(Process):
        def initialize(self) -> None:
            self.install("boom", self._boom)

        def _boom(self, sender: UPID, body: bytes) -> None:
            raise RuntimeError("handler bug")

    before = metrics.counters.get("libproc/handler_errors", 0)
    pid = libproc.spawn(Raiser())
    libproc.runtime.lookup(pid).send(pid, "boom")  # type: ignore[union-attr]
    await Clock.settle()
    assert metrics.counters.get("libproc/handler_errors", 0) == before + 1
    assert await within(libproc.dispatch(pid, lambda: "alive")) == "alive"


# -- defer ----------------------------------------------------------------------------


async def test_defer_runs_the_callback_inside_the_process(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    p: Promise[int] = Promise()
    seen: Promise[Any] = Promise()

    def on_value(value: int) -> None:
        seen.set((value, libproc.runtime.lookup(pid) is w and w.log[-1]))

    p.future.on_ready(libproc.defer(pid, on_value))
    ran_later = libproc.defer(pid, Worker.add, 10)
    added = ran_later(5)  # queued first, so it runs before on_value
    p.set(5)
    assert await within(added) == 15
    assert await within(seen.future) == (5, ("add", 10, 5))


# -- messages -------------------------------------------------------------------------


async def test_local_message_is_delivered_with_its_sender(runtime: UPID) -> None:
    a, b = Worker(), Worker()
    libproc.spawn(a)
    libproc.spawn(b)
    a.send(b.pid, "note", b"hi")
    await Clock.settle()
    assert b.log[-1] == ("note", a.pid, b"hi", a.pid)
    assert b.sender is None  # only set while handling


async def test_local_messages_keep_their_order(runtime: UPID) -> None:
    a, b = Worker(), Worker()
    libproc.spawn(a)
    libproc.spawn(b)
    for i in range(2000):
        a.send(b.pid, "note", b"%d" % i)
    await Clock.settle()
    assert [int(e[2]) for e in b.log if isinstance(e, tuple)] == list(range(2000))


async def test_message_without_handler_is_counted_and_dropped(runtime: UPID) -> None:
    a, b = Worker(), Worker()
    libproc.spawn(a)
    libproc.spawn(b)
    before = metrics.counters.get("libproc/messages_unhandled", 0)
    a.send(b.pid, "nobody-handles-this", b"x")
    await Clock.settle()
    assert metrics.counters.get("libproc/messages_unhandled", 0) == before + 1


async def test_message_to_a_missing_local_process_is_dropped(runtime: UPID) -> None:
    a = Worker()
    libproc.spawn(a)
    before = metrics.counters.get("libproc/messages_dropped_no_process", 0)
    a.send(runtime.with_id("ghost"), "note", b"x")
    assert metrics.counters.get("libproc/messages_dropped_no_process", 0) == before + 1


# -- terminate / wait -----------------------------------------------------------------


async def test_terminate_inject_true_drops_queued_events(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    await Clock.settle()
    queued = libproc.dispatch(pid, Worker.add, 1, 1)
    w.send(pid, "note", b"dropped")
    assert libproc.terminate(pid) is True
    assert await within(libproc.wait(pid)) is True
    assert queued.is_discarded()
    with pytest.raises(FutureDiscardedError):
        queued.get()
    assert w.log == ["initialize", "finalize"]
    assert w.state == "terminated"


async def test_terminate_inject_false_runs_queued_events_first(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    queued = libproc.dispatch(pid, Worker.add, 1, 1)
    w.send(pid, "note", b"kept")
    libproc.terminate(pid, inject=False)
    assert libproc.dispatch(pid, Worker.add, 2, 2).is_failed()  # after terminate: refused
    assert await within(libproc.wait(pid)) is True
    assert queued.get() == 2
    assert w.log[0] == "initialize"
    assert w.log[1] == ("add", 1, 1)
    assert w.log[2][:3] == ("note", pid, b"kept")
    assert w.log[3] == "finalize"


async def test_terminate_of_an_unknown_or_terminating_process_returns_false(
    runtime: UPID,
) -> None:
    pid = libproc.spawn(Worker())
    assert libproc.terminate("nobody") is False
    assert libproc.terminate(pid) is True
    assert libproc.terminate(pid) is False


async def test_terminate_waits_for_a_running_coroutine_handler(runtime: UPID) -> None:
    w = Worker()
    pid = libproc.spawn(w)
    gate = asyncio.Event()
    slow = libproc.dispatch(pid, Worker.slow, gate)
    await Clock.settle(max_rounds=20)
    libproc.terminate(pid)
    done = libproc.wait(pid)
    await asyncio.sleep(0)
    assert done.is_pending()
    gate.set()
    assert await within(done) is True
    assert slow.get() == "slow done"
    assert w.log[-1] == "finalize"


async def test_async_finalize_is_awaited_before_the_process_is_gone(runtime: UPID) -> None:
    finished: list[str] = []

    class AsyncFinal(Process):
        async def finalize(self) -> None:
            await asyncio.sleep(0)
            finished.append("finalized")

    pid = libproc.spawn(AsyncFinal())
    libproc.terminate(pid)
    assert await within(libproc.wait(pid)) is True
    assert finished == ["finalized"]
    assert libproc.runtime.lookup(pid) is None


async def test_wait_on_a_missing_process_is_ready_at_once(runtime: UPID) -> None:
    # libprocess: "true if a process was actually waited upon" (issue 17).
    assert libproc.wait("nobody-here").get() is False
    assert libproc.wait(Worker()).get() is False  # never spawned
    pid = libproc.spawn(Worker())
    libproc.terminate(pid)
    assert await within(libproc.wait(pid)) is True
    assert libproc.wait(pid).get() is True  # it ran here and is gone


async def test_wait_with_timeout_is_false_while_the_process_runs(runtime: UPID) -> None:
    Clock.pause()
    pid = libproc.spawn(Worker())
    waited = libproc.wait(pid, timeout=5)
    Clock.advance(4)
    assert waited.is_pending()
    Clock.advance(1)
    assert waited.get() is False
    assert libproc.runtime.lookup(pid) is not None


async def test_wait_with_timeout_is_true_when_the_process_ends_in_time(
    runtime: UPID,
) -> None:
    Clock.pause()
    pid = libproc.spawn(Worker())
    waited = libproc.wait(pid, timeout=5)
    libproc.terminate(pid)
    assert await within(waited) is True
    Clock.advance(10)
    assert waited.get() is True


async def test_stop_terminates_every_process(runtime: UPID) -> None:
    w = Worker()
    libproc.spawn(w)
    await libproc.stop()
    assert w.state == "terminated"
    assert w.log[-1] == "finalize"
    await libproc.start(host="127.0.0.1", port=0)  # for the fixture's stop()


# -- links ----------------------------------------------------------------------------


async def test_link_to_a_local_process_that_terminates_gives_exited_once(
    runtime: UPID,
) -> None:
    linker, linkee = Worker(), Worker()
    libproc.spawn(linker)
    libproc.spawn(linkee)
    await within(libproc.dispatch(linker, lambda: linker.link(linkee.pid)))
    await within(libproc.dispatch(linker, lambda: linker.link(linkee.pid)))  # twice: one link
    libproc.terminate(linkee)
    await within(libproc.wait(linkee))
    await Clock.settle()
    assert [e for e in linker.log if e[0] == "exited"] == [("exited", linkee.pid)]


async def test_link_to_a_nonexistent_local_id_gives_exited_at_once(runtime: UPID) -> None:
    linker = Worker()
    libproc.spawn(linker)
    ghost = runtime.with_id("ghost")
    await within(libproc.dispatch(linker, lambda: linker.link(ghost)))
    await Clock.settle()
    assert ("exited", ghost) in linker.log


async def test_a_terminated_linker_gets_nothing_and_breaks_nothing(runtime: UPID) -> None:
    linker, linkee = Worker(), Worker()
    libproc.spawn(linker)
    libproc.spawn(linkee)
    await within(libproc.dispatch(linker, lambda: linker.link(linkee.pid)))
    libproc.terminate(linker)
    await within(libproc.wait(linker))
    libproc.terminate(linkee)
    await within(libproc.wait(linkee))
    assert not any(e[0] == "exited" for e in linker.log if isinstance(e, tuple))


# -- ProtobufProcess ------------------------------------------------------------------


class Master(ProtobufProcess):
    def __init__(self) -> None:
        super().__init__(prefix="pbmaster")
        self.reports: list[Any] = []
        self.whole: list[Any] = []

    def initialize(self) -> None:
        self.install(pb.ReportProgressMessage, self.report_progress, "tasks", "slave_id")
        self.install(pb.LaunchTasksMessage, self.whole_message)

    def report_progress(self, sender: UPID, tasks: list[pb.Task], slave_id: pb.SlaveID) -> None:
        self.reports.append((sender, tasks, slave_id.value))
        self.reply(pb.LaunchTasksMessage(id=len(tasks)))

    def whole_message(self, sender: UPID, message: pb.LaunchTasksMessage) -> None:
        self.whole.append((sender, message))


def progress(*names: str) -> pb.ReportProgressMessage:
    return pb.ReportProgressMessage(
        tasks=[pb.Task(name=n, task_id=pb.TaskID(value=f"id-{n}"), progress=0.5) for n in names],
        slave_id=pb.SlaveID(value="s1"),
    )


async def test_protobuf_install_unpacks_named_fields_and_repeated_as_list(
    runtime: UPID,
) -> None:
    master, slave = Master(), Master()
    libproc.spawn(master)
    libproc.spawn(slave)
    slave.send(master.pid, progress("a", "b"))
    await Clock.settle()
    ((sender, tasks, slave_id),) = master.reports
    assert sender == slave.pid
    assert isinstance(tasks, list)
    assert [t.name for t in tasks] == ["a", "b"]
    assert tasks[1].task_id.value == "id-b"
    assert slave_id == "s1"


async def test_protobuf_install_without_fields_passes_the_message_and_reply_answers(
    runtime: UPID,
) -> None:
    master, slave = Master(), Master()
    libproc.spawn(master)
    libproc.spawn(slave)
    slave.send(master.pid, progress("a", "b", "c"))
    await Clock.settle()
    ((sender, message),) = slave.whole
    assert sender == master.pid
    assert isinstance(message, pb.LaunchTasksMessage)
    assert message.id == 3


async def test_protobuf_message_name_on_the_wire_is_the_full_name(runtime: UPID) -> None:
    raw = Worker()
    libproc.spawn(raw)
    seen: list[str] = []
    raw.install("cluster.ReportProgressMessage", lambda s, b: seen.append(b))
    sender = Master()
    libproc.spawn(sender)
    sender.send(raw.pid, progress("x"))
    await Clock.settle()
    assert pb.ReportProgressMessage.FromString(seen[0]).tasks[0].name == "x"


async def test_install_of_an_unknown_field_names_the_fields(runtime: UPID) -> None:
    with pytest.raises(ValueError, match="has no field 'taks'.*tasks"):
        Master().install(pb.ReportProgressMessage, lambda *a: None, "taks")


async def test_reply_outside_a_handler_is_an_error(runtime: UPID) -> None:
    m = Master()
    libproc.spawn(m)
    with pytest.raises(RuntimeError, match="outside a message handler"):
        m.reply(pb.LaunchTasksMessage(id=1))


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"\x1a\x00"],  # corrupt; a Task missing its required fields
    ids=["corrupt", "missing-required-fields"],
)
async def test_undecodable_protobuf_is_counted_and_dropped(runtime: UPID, body: bytes) -> None:
    master, sender = Master(), Worker()
    libproc.spawn(master)
    libproc.spawn(sender)
    before = metrics.counters.get("libproc/messages_undecodable", 0)
    sender.send(master.pid, "cluster.ReportProgressMessage", body)
    await Clock.settle()
    assert master.reports == []
    assert metrics.counters.get("libproc/messages_undecodable", 0) == before + 1
    sender.send(master.pid, "cluster.ReportProgressMessage", progress("ok").SerializeToString())
    await Clock.settle()
    assert [t.name for t in master.reports[0][1]] == ["ok"]


async def test_future_awaitable_from_a_coroutine_message_handler(runtime: UPID) -> None:
    results: Promise[Any] = Promise()

    class Asker(Process):
        def initialize(self) -> None:
            self.install("ask", self._ask)

        async def _ask(self, sender: UPID, body: bytes) -> None:
            other = libproc.dispatch(helper.pid, lambda: b"answer:" + body)
            answer = await other
            results.set((answer, self.sender))

    helper = Worker()
    libproc.spawn(helper)
    asker = Asker()
    libproc.spawn(asker)
    helper.send(asker.pid, "ask", b"42")
    assert await within(results.future) == (b"answer:42", helper.pid)


async def test_future_is_usable_where_an_asyncio_awaitable_is(runtime: UPID) -> None:
    pid = libproc.spawn(Worker())
    done, _ = await asyncio.wait(
        [asyncio.ensure_future(_aw(libproc.dispatch(pid, "add", 2, 3)))], timeout=5
    )
    assert [t.result() for t in done] == [5]
    assert isinstance(libproc.dispatch(pid, "add", 0, 0), Future)


async def _aw(f: Future[Any]) -> Any:
    return await f


def test_no_process_subclass_of_ours_reuses_a_private_name_of_process() -> None:
    """Process keeps its mailbox machinery in private names (`_run`, `_schedule_run`, ...); a
    subclass that defined one of them for itself (the master has a `_schedule` of its own)
    would silently replace it."""
    import inspect
    import re

    import libproc.executor
    import libproc.names
    import master.process
    import slave.process

    del libproc.executor, libproc.names, master.process, slave.process

    def private(names: Any) -> set[str]:
        return {n for n in names if n.startswith("_") and not n.startswith("__")}

    source = inspect.getsource(Process)
    ours = private(vars(Process)) | set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", source))
    subclasses: list[type] = []
    todo = list(Process.__subclasses__())
    while todo:
        cls = todo.pop()
        subclasses.append(cls)
        todo.extend(cls.__subclasses__())
    assert any(c.__module__ == "master.process" for c in subclasses)
    for cls in subclasses:
        if cls.__module__.startswith(("tests.", "test_")):
            continue
        try:
            text = inspect.getsource(cls)
        except (OSError, TypeError):
            text = ""
        theirs = private(vars(cls)) | set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", text))
        clash = sorted(theirs & ours)
        assert not clash, f"{cls.__module__}.{cls.__qualname__} redefines {clash}"
