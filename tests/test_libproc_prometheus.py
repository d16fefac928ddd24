"""GET /metrics: libproc's counters and gauges, and processes' collectors, in the Prometheus
text format, over real loopback sockets, checked with prometheus_client's own parser."""

from __future__ import annotations

import json
from collections.abc import Iterable

import aiohttp
import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

import libproc
from libproc import UPID, Process, metrics, prometheus
from libproc.prometheus import Families, metric_name, snapshot_families

pytestmark = pytest.mark.timeout(60)


async def get(port: int, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def parsed(text: str) -> dict[str, Metric]:
    """The families of an exposition; a name seen twice fails (an invalid exposition)."""
    out: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"family {family.name} appears twice"
        out[family.name] = family
    return out


def value(family: Metric, **labels: str) -> float:
    (sample,) = [s for s in family.samples
                 if s.labels == labels and not s.name.endswith("_created")]
    return float(sample.value)


class Sink(Process):
    def initialize(self) -> None:
        self.install("m", lambda sender, body: None)


async def test_metrics_serves_libproc_counters_and_gauges_in_text_format(
        runtime: UPID) -> None:
    sink = Sink("sink")
    libproc.spawn(sink)
    for _ in range(3):
        libproc.post(sink.pid, "m", b"x")  # local: counted as libproc/messages_local
    await libproc.Clock.settle()
    status, ctype, text = await get(runtime.port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    families = parsed(text)
    local = families["libproc_messages_local"]
    assert local.type == "counter"
    assert value(local) == metrics.counters["libproc/messages_local"] >= 3
    assert "# TYPE libproc_messages_local_total counter" in text
    processes = families["libproc_processes"]
    assert processes.type == "gauge" and value(processes) == 1
    assert families["libproc_connections_inbound"].type == "gauge"
    # /metrics/snapshot is still the JSON of the same figures
    status, ctype, body = await get(runtime.port, "/metrics/snapshot")
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["libproc/messages_local"] == metrics.counters[
        "libproc/messages_local"]


async def test_collectors_of_one_family_are_merged_into_one_valid_family(runtime: UPID) -> None:
    def collector(who: str, n: int) -> prometheus.Collect:
        def collect() -> Iterable[Metric]:
            fam = Families(process=who)
            fam.gauge("demo_tasks", "Tasks by state.", n, state="running")
            fam.gauge("demo_tasks", "Tasks by state.", n + 1, state="staging")
            fam.counter("demo_launches", "Launches.", 10 * n)
            return fam
        return collect

    prometheus.add_collector("one", collector("one", 1))
    prometheus.add_collector("two", collector("two", 2))
    status, _, text = await get(runtime.port, "/metrics")
    assert status == 200
    families = parsed(text)
    tasks = families["demo_tasks"]
    assert tasks.type == "gauge"
    assert value(tasks, process="one", state="running") == 1
    assert value(tasks, process="two", state="staging") == 3
    launches = families["demo_launches"]
    assert launches.type == "counter"
    assert value(launches, process="two") == 20
    prometheus.remove_collector("two")
    families = parsed((await get(runtime.port, "/metrics"))[2])
    assert {s.labels["process"] for s in families["demo_tasks"].samples} == {"one"}


async def test_a_collector_that_raises_is_left_out_and_counted(runtime: UPID) -> None:
    def broken() -> Iterable[Metric]:
        fam = Families()
        fam.gauge("half_done", "Never served: the collector raises after it.", 1)
        raise RuntimeError("boom")

    def fine() -> Iterable[Metric]:
        fam = Families()
        fam.gauge("fine_value", "Served.", 7)
        return fam

    before = metrics.counters.get("libproc/prometheus_collector_errors", 0)
    prometheus.add_collector("broken", broken)
    prometheus.add_collector("fine", fine)
    status, _, text = await get(runtime.port, "/metrics")
    assert status == 200
    families = parsed(text)
    assert "half_done" not in families
    assert value(families["fine_value"]) == 7
    assert metrics.counters["libproc/prometheus_collector_errors"] == before + 1


async def test_a_family_of_another_type_under_a_taken_name_is_dropped(runtime: UPID) -> None:
    def gauge() -> Iterable[Metric]:
        fam = Families()
        fam.gauge("clash", "A gauge.", 1)
        return fam

    def counter() -> Iterable[Metric]:
        fam = Families()
        fam.counter("clash", "A counter.", 2)
        return fam

    prometheus.add_collector("a", gauge)
    prometheus.add_collector("b", counter)
    families = parsed((await get(runtime.port, "/metrics"))[2])
    assert families["clash"].type == "gauge" and value(families["clash"]) == 1


async def test_stop_forgets_collectors() -> None:
    await libproc.start(host="127.0.0.1", port=0)
    prometheus.add_collector("left", lambda: [])
    await libproc.stop()
    address = await libproc.start(host="127.0.0.1", port=0)
    try:
        assert "left" not in prometheus._collectors
        assert (await get(address.port, "/metrics"))[0] == 200
    finally:
        await libproc.stop()


def test_metric_names_are_made_valid() -> None:
    assert metric_name("libproc/messages_received") == "libproc_messages_received"
    assert metric_name("a.b-c d") == "a_b_c_d"
    assert metric_name("9lives") == "_9lives"
    names = [f.name for f in snapshot_families(
        {"x/done_total": 1.0, "x/done": 2.0, "x/g": 3.0}, {"x/done_total", "x/done"})]
    assert names == ["x_done", "x_g"]  # the second key that maps to x_done is left out
