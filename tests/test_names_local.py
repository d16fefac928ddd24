"""The name service, names client and Mesh in one OS process, on the paused Clock.

Everything here runs in one libproc runtime (local sends never touch the network), so the
routing choices, notices, heartbeats, retries and restarts are checked deterministically.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock, Future, ProtobufProcess, dispatch
from libproc.names import (
    OFFLINE,
    ONLINE,
    Instance,
    InvalidNameError,
    Mesh,
    NamesClient,
    NamesError,
    NameService,
    NoInstanceError,
    Notice,
    RegistrationRefusedError,
)
from libproc.names import names_pb2 as pb

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def rt() -> AsyncIterator[UPID]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0)
    Clock.pause()
    try:
        yield address
    finally:
        await libproc.stop()
        Clock.reset()


async def advance(seconds: float, step: float = 0.05) -> None:
    """Advance the paused clock in small steps, letting processes run between them."""
    await Clock.settle()
    elapsed = 0.0
    while elapsed < seconds - 1e-9:
        Clock.advance(step)
        elapsed += step
        await Clock.settle()


async def within(aw: Any, seconds: float = 5.0) -> Any:
    async def run() -> Any:
        return await aw

    return await asyncio.wait_for(run(), seconds)


class Node(ProtobufProcess):
    """An instance and a caller: records raw 'work' messages and notices."""

    def __init__(self, client: NamesClient) -> None:
        super().__init__(prefix="node")
        self.client = client
        self.got: list[bytes] = []
        self.notices: list[Notice] = []
        self.mesh: Mesh

    def initialize(self) -> None:
        self.mesh = Mesh(self, self.client)
        self.install("work", lambda sender, body: self.got.append(body))

    def on_notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def blast(self, query: str, n: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        for i in range(n):
            counts[self.mesh.send_stateless(query, "work", b"%d" % i).get().name] += 1
        return counts


async def now(proc: Any, fn: Any) -> Future[Any]:
    """Run `fn()` (which returns a Future) on `proc` and return that Future, not its value."""
    box = await within(dispatch(proc, lambda: [fn()]))
    return box[0]  # type: ignore[no-any-return]


async def setup(rt: UPID, n: int = 3, backoff_max: float = 2.0,
                **service: Any) -> tuple[NameService, NamesClient, list[Node], Node]:
    ns = NameService(**service)
    libproc.spawn(ns)
    client = NamesClient(ns.pid, secret=service.get("secret"), jitter=0,
                         backoff_max=backoff_max)
    libproc.spawn(client)
    nodes = [Node(client) for _ in range(n + 1)]
    for node in nodes:
        libproc.spawn(node)
    await Clock.settle()
    for i, node in enumerate(nodes[:n]):
        inst = await within(node.mesh.register(f"demo.pong.dev.{i}", user_data=f"u{i}"))
        assert inst == Instance(f"demo.pong.dev.{i}", node.pid, f"u{i}")
    await within(nodes[n].mesh.resolve("demo.pong"))
    return ns, client, nodes[:n], nodes[n]


async def test_register_is_confirmed_and_watchers_see_online_then_offline(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt)
    watch = caller.mesh.watch("demo.pong", caller.on_notice)
    current = await within(watch.ready)
    assert [i.name for i in current] == ["demo.pong.dev.0", "demo.pong.dev.1", "demo.pong.dev.2"]
    await Clock.settle()
    assert [(n.kind, n.instance.name) for n in caller.notices] == [
        (ONLINE, "demo.pong.dev.0"), (ONLINE, "demo.pong.dev.1"), (ONLINE, "demo.pong.dev.2")]
    assert caller.notices[1].instance.user_data == "u1"
    caller.notices.clear()
    assert await within(nodes[1].mesh.unregister("demo.pong.dev.1")) is True
    await Clock.settle()
    assert [(n.kind, n.instance.name, n.reason) for n in caller.notices] == [
        (OFFLINE, "demo.pong.dev.1", "unregistered")]
    assert [i.name for i in watch.instances] == ["demo.pong.dev.0", "demo.pong.dev.2"]
    assert [i.name for i in await within(dispatch(ns, NameService.instances, "demo"))] == [
        "demo.pong.dev.0", "demo.pong.dev.2"]


async def test_malformed_name_fails_at_once(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=0)
    f = caller.mesh.register("demo.pong")
    assert f.is_failed() and isinstance(f.exception, InvalidNameError)
    assert "has 2 part(s)" in f.failure()


async def test_service_refuses_a_malformed_name_with_the_reason(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=0)
    f = dispatch(client, NamesClient.register, Instance("demo..dev.1", caller.pid))
    with pytest.raises(RegistrationRefusedError, match=r"part 2 '\(empty\)'"):
        await within(f)


async def test_registration_without_the_secret_is_refused(rt: UPID) -> None:
    ns = NameService(secret="s3cret")
    libproc.spawn(ns)
    client = NamesClient(ns.pid, id="names-client(nosecret)")
    libproc.spawn(client)
    node = Node(client)
    libproc.spawn(node)
    await Clock.settle()
    with pytest.raises(RegistrationRefusedError, match="missing secret"):
        await within(node.mesh.register("demo.pong.dev.1"))
    watch = node.mesh.watch("demo.pong")
    with pytest.raises(NamesError, match="watch of 'demo.pong' refused.*missing secret"):
        await within(watch.ready)
    assert await within(dispatch(ns, NameService.instances)) == []


async def test_name_held_by_another_upid_is_refused_unless_replace(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=1)
    other = NamesClient(ns.pid, id="names-client(other)")
    libproc.spawn(other)
    intruder = Node(other)
    libproc.spawn(intruder)
    watch = caller.mesh.watch("demo.pong", caller.on_notice, replay=False)
    await within(watch.ready)
    with pytest.raises(RegistrationRefusedError, match="held by " + re.escape(str(nodes[0].pid))):
        await within(intruder.mesh.register("demo.pong.dev.0"))
    inst = await within(intruder.mesh.register("demo.pong.dev.0", replace=True))
    await Clock.settle()
    assert inst.pid == intruder.pid
    assert [(n.kind, n.instance.pid) for n in caller.notices] == [
        (OFFLINE, nodes[0].pid), (ONLINE, intruder.pid)]


async def test_send_stateless_spreads_10000_sends_evenly(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt)
    counts = await within(dispatch(caller, Node.blast, "demo.pong", 10_000))
    await Clock.settle()
    assert sum(counts.values()) == 10_000
    # Round robin: every instance gets 10000/3 within one message (tolerance stated: 1%).
    for node, name in zip(nodes, sorted(counts)):
        assert abs(counts[name] - 10_000 / 3) <= 100
        assert len(node.got) == counts[name]
    assert len(caller.got) == 0


async def test_send_stateless_skips_offline_instances_and_fails_when_none(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt)
    await within(dispatch(caller, Node.blast, "demo.pong", 3))
    libproc.terminate(nodes[0])  # its names client unregisters it
    await Clock.settle()
    counts = await within(dispatch(caller, Node.blast, "demo.pong", 1000))
    assert set(counts) == {"demo.pong.dev.1", "demo.pong.dev.2"}
    assert counts["demo.pong.dev.1"] == counts["demo.pong.dev.2"] == 500
    for node in nodes[1:]:
        await within(node.mesh.unregister(f"demo.pong.dev.{nodes.index(node)}"))
    await Clock.settle()
    f = await now(caller, lambda: caller.mesh.send_stateless("demo.pong", "work"))
    assert f.is_failed() and isinstance(f.exception, NoInstanceError)
    assert "no online instance of 'demo.pong'" in f.failure()


async def test_send_stateless_never_picks_the_sender_itself(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=2)
    counts = await within(dispatch(nodes[0], Node.blast, "demo.pong", 50))
    assert counts == {"demo.pong.dev.1": 50}
    await within(nodes[1].mesh.unregister("demo.pong.dev.1"))
    await Clock.settle()
    await within(await now(nodes[0], lambda: nodes[0].mesh.resolve("demo")))
    f = await now(nodes[0], lambda: nodes[0].mesh.send_stateless("demo", "work"))
    assert f.is_failed() and "this process itself" in f.failure()


async def test_send_stateful_same_key_same_instance_and_leaving_moves_only_its_keys(
        rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=4)
    keys = [f"user-{k}" for k in range(400)]

    def route_all() -> dict[str, str]:
        return {k: caller.mesh.send_stateful("demo.pong", k, "work", k.encode()).get().name
                for k in keys}

    before = await within(dispatch(caller, route_all))
    again = await within(dispatch(caller, route_all))
    assert before == again
    await Clock.settle()
    for i, node in enumerate(nodes):  # each message reached the instance it was routed to
        assert Counter(node.got) == Counter(
            {k.encode(): 2 for k in keys if before[k] == f"demo.pong.dev.{i}"})
    assert len(set(before.values())) == 4
    await within(nodes[2].mesh.unregister("demo.pong.dev.2"))
    await Clock.settle()
    after = await within(dispatch(caller, route_all))
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "demo.pong.dev.2"}
    assert "demo.pong.dev.2" not in after.values()


async def test_send_to_a_named_instance_and_to_an_offline_one(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt)
    inst = await within(dispatch(caller, lambda: caller.mesh.send_to("demo.pong.dev.1", "work",
                                                                       b"x")))  # resolves
    await Clock.settle()
    assert inst.pid == nodes[1].pid and nodes[1].got == [b"x"]
    await within(nodes[1].mesh.unregister("demo.pong.dev.1"))
    await Clock.settle()
    f = await now(caller, lambda: caller.mesh.send_to("demo.pong.dev.1", "work"))
    assert f.is_failed() and "it is offline" in f.failure()
    f = await now(caller, lambda: caller.mesh.send_to("demo.pong.dev", "work"))
    assert f.is_failed() and isinstance(f.exception, InvalidNameError)


class Mute(ProtobufProcess):
    """A client that registers an instance, then never answers the heartbeat."""

    def __init__(self, ns: UPID) -> None:
        super().__init__("names-client(mute)")
        self.ns = ns
        self.evicted: list[str] = []
        self.pings = 0

    def initialize(self) -> None:
        self.install(pb.Ping, lambda sender, msg: setattr(self, "pings", self.pings + 1))
        self.install(pb.Evicted, lambda sender, msg: self.evicted.append(msg.reason))
        self.send(self.ns, pb.RegisterRequest(request_id=1, instance=pb.Instance(
            name="demo.pong.dev.9", pid=str(self.pid))))


async def test_silent_client_is_offline_after_the_heartbeat_timeout(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, n=1, heartbeat_timeout=1.0)
    watch = caller.mesh.watch("demo.pong", caller.on_notice, replay=False)
    await within(watch.ready)
    mute = Mute(ns.pid)
    libproc.spawn(mute)
    await Clock.settle()
    assert [(n.kind, n.instance.name) for n in caller.notices] == [(ONLINE, "demo.pong.dev.9")]
    await advance(0.9)
    assert len(caller.notices) == 1 and mute.pings >= 2  # pinged, not yet timed out
    await advance(0.5)  # timeout 1.0 s + at most one interval (1/3 s)
    assert [(n.kind, n.instance.name) for n in caller.notices][1:] == [
        (OFFLINE, "demo.pong.dev.9")]
    assert "heartbeat timeout" in caller.notices[1].reason
    assert mute.evicted and "stopped or hung" in mute.evicted[0]
    # The healthy client, which answers the pings, kept its instance.
    await advance(3.0)
    assert [i.name for i in await within(dispatch(ns, NameService.instances))] == [
        "demo.pong.dev.0"]


async def test_registration_retries_with_backoff_until_the_service_starts(rt: UPID) -> None:
    client = NamesClient(rt.with_id("names"), jitter=0, backoff=0.1, backoff_max=0.4)
    libproc.spawn(client)
    node = Node(client)
    libproc.spawn(node)
    await Clock.settle()
    f = node.mesh.register("demo.pong.dev.1")
    await advance(2.0)
    assert f.is_pending()
    libproc.spawn(NameService())
    await advance(0.45)  # within one maximal backoff
    assert f.is_ready() and f.get().pid == node.pid


async def test_restarted_service_is_repopulated_and_watchers_resubscribe(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt, recovery=1.0, backoff_max=0.4)
    watcher_client = NamesClient(ns.pid, id="names-client(watcher)", jitter=0, backoff_max=0.4)
    libproc.spawn(watcher_client)
    watcher = Node(watcher_client)
    libproc.spawn(watcher)
    watch = None
    await Clock.settle()
    watch = watcher.mesh.watch("demo.pong", watcher.on_notice, replay=False)
    await within(watch.ready)
    libproc.terminate(ns)
    await libproc.wait(ns)
    await advance(1.0)  # both clients retry against nobody
    libproc.terminate(nodes[2])  # dies while the service is down
    await Clock.settle()
    new = NameService(recovery=1.0)
    libproc.spawn(new)
    await advance(0.5)  # within the recovery window: re-registered, nothing flaps
    names = [i.name for i in await within(dispatch(new, NameService.instances))]
    assert names == ["demo.pong.dev.0", "demo.pong.dev.1"]
    assert watcher.notices == []
    assert len(watch.instances) == 3
    await advance(1.0)  # recovery over: the dead one goes Offline, the rest stay
    assert [(n.kind, n.instance.name) for n in watcher.notices] == [
        (OFFLINE, "demo.pong.dev.2")]
    # The new service knows the watcher: a newcomer reaches it.
    await within(caller.mesh.register("demo.pong.dev.7"))
    await Clock.settle()
    assert [(n.kind, n.instance.name) for n in watcher.notices][1:] == [
        (ONLINE, "demo.pong.dev.7")]


async def test_first_send_to_an_unresolved_query_waits_for_the_answer(rt: UPID) -> None:
    ns, client, nodes, caller = await setup(rt)
    f = await now(caller, lambda: caller.mesh.send_stateless("demo.pong.dev", "work"))
    assert f.is_pending()
    inst = await within(f)
    await Clock.settle()
    index = int(inst.name.rsplit(".", 1)[1])
    assert inst.pid == nodes[index].pid and nodes[index].got == [b""]
    assert sum(len(n.got) for n in nodes) == 1
    bad = await now(caller, lambda: caller.mesh.send_stateless("demo..x", "w"))
    assert isinstance(bad.exception, InvalidNameError)


async def test_resolve_fails_clearly_when_the_service_never_answers(rt: UPID) -> None:
    client = NamesClient(rt.with_id("nobody"), jitter=0, resolve_timeout=2.0)
    libproc.spawn(client)
    node = Node(client)
    libproc.spawn(node)
    await Clock.settle()
    f = await now(node, lambda: node.mesh.send_stateless("demo.pong", "work"))
    await advance(2.1)
    assert f.is_failed() and "did not answer within 2s" in f.failure()


async def test_connect_spawns_one_client_and_a_watch_can_be_iterated(rt: UPID) -> None:
    from libproc import names

    ns = NameService()
    libproc.spawn(ns)
    client = names.connect(ns.pid)
    assert names.connect(str(ns.pid)) is client and names.default_client() is client
    with pytest.raises(NamesError, match="already talks to"):
        names.connect(rt.with_id("elsewhere"))
    node = Node(client)
    libproc.spawn(node)
    await Clock.settle()
    await within(node.mesh.register("demo.pong.dev.1"))
    stream = names.watch("demo")
    got = []

    async def read() -> None:
        async for notice in stream:
            got.append((notice.kind, notice.instance.name))
            if len(got) == 2:
                return

    reader = asyncio.ensure_future(read())
    await within(stream.ready)
    await within(node.mesh.unregister("demo.pong.dev.1"))
    await within(reader)
    assert got == [(ONLINE, "demo.pong.dev.1"), (OFFLINE, "demo.pong.dev.1")]
    libproc.terminate(client)
    await libproc.wait(client)
    with pytest.raises(NamesError, match="no names client runs"):
        names.default_client()
