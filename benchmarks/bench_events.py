"""The event hub's cost on the master (master/events.py), beside a baseline of the same run.

    python -m benchmarks.bench_events [--events 20000] [--subscribers 8] [--runs 3]

Baseline: `json.dumps` of each task's JSON, once per event: the least any stream must spend
to put an event on the wire. Measured:
1. `publish_task` with no subscriber (what every state change costs while no dashboard is
   open: the backlog keeps the event; nothing is serialized).
2. The same events with N real SSE subscribers (aiohttp clients in another OS process over
   loopback, each reading every event): the serving process's CPU per event, from
   `time.process_time`, so publishing, serializing once and writing to N sockets all count.
Each figure is printed with its ratio to the baseline (lower is cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from master.events import EventHub, HubLimits


def _task(i: int) -> dict[str, Any]:
    return {"id": str(i), "name": f"job-{i}", "command": "for i in 1 2 3; do sleep 1; done",
            "cpus": 0.1, "mem": 32.0, "timeout": None, "retries": 0, "state": "RUNNING",
            "progress": 0.5, "exit_code": None, "message": "", "slave_id": "b2e1f3a4-S1",
            "attempts": 1, "submitted_at": 1.7e9, "started_at": 1.7e9, "finished_at": None,
            "updated_at": 1.7e9}


def baseline(n: int) -> float:
    tasks = [_task(i) for i in range(n)]
    start = time.process_time()
    for t in tasks:
        json.dumps(t, separators=(",", ":"))
    return (time.process_time() - start) / n


async def no_subscriber(n: int) -> float:
    hub = EventHub(HubLimits(backlog=max(n, 1024), subscriber_buffer=1024))
    tasks = [_task(i) for i in range(n)]
    start = time.process_time()
    for t in tasks:
        hub.publish_task(t)
    return (time.process_time() - start) / n


async def with_subscribers(n: int, subscribers: int) -> float:
    hub = EventHub(HubLimits(backlog=max(4096, n), subscriber_buffer=max(1024, n),
                             max_subscribers=subscribers + 1))
    app = web.Application()
    app.router.add_get("/master/events", hub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/master/events"
    clients = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_events", "clients", url,
                                str(subscribers), str(n)], stdout=subprocess.PIPE, text=True)
    try:
        while hub.subscribers < subscribers:
            await asyncio.sleep(0.01)
        tasks = [_task(i) for i in range(n)]
        start = time.process_time()
        for i, t in enumerate(tasks):
            hub.publish_task(t)
            if i % 256 == 255:
                await asyncio.sleep(0)  # let the writers run, as the master's loop would
        while hub.subscribers:  # every client read every event, then hung up
            await asyncio.sleep(0.001)
            if clients.poll() is not None:
                break
        cpu = time.process_time() - start
        out, _ = clients.communicate(timeout=60)
        if clients.returncode != 0 or int(out.split()[0]) != n * subscribers:
            raise RuntimeError(f"the subscribers did not read every event: {out!r}")
        return cpu / n
    finally:
        if clients.poll() is None:
            clients.kill()
        hub.close()
        await runner.cleanup()


async def _clients(url: str, count: int, n: int) -> int:
    async def one(session: ClientSession) -> int:
        got = 0
        async with session.get(url) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    got += 1
                    if got == n:
                        return got
        return got

    async with ClientSession(timeout=ClientTimeout(total=300)) as session:
        return sum(await asyncio.gather(*[one(session) for _ in range(count)]))


def main(argv: list[str]) -> int:
    if argv[:1] == ["clients"]:
        print(asyncio.run(_clients(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    base, empty, full = [], [], []
    for _ in range(args.runs):
        base.append(baseline(args.events))
        empty.append(asyncio.run(no_subscriber(args.events)))
        full.append(asyncio.run(with_subscribers(args.events, args.subscribers)))
    b = statistics.median(base)
    print(f"events: {args.events} task events, median of {args.runs} runs")
    print(f"baseline  json.dumps of each task:           {b * 1e6:7.2f} us/event   1.00x")
    for label, values in (("publish_task, no subscriber:", empty),
                          (f"served to {args.subscribers} SSE subscribers:", full)):
        m = statistics.median(values)
        print(f"hub       {label:<35}{m * 1e6:7.2f} us/event   {m / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
