"""The master at a million tasks: memory, restart, listing pages, /vars, status updates.

    python -m benchmarks.bench_scale [--tasks 1000000] [--active 10000]

A real master (its own OS process, SQLite file) with no slave is fed `--tasks` tasks through
`POST /master/tasks` in batches of 10,000, each batch ended at once through the bulk kill
(`POST /master/tasks/kill {"state": ["PENDING"]}`), then `--active` tasks that stay PENDING.
Printed, each beside a baseline of the same run:

- RSS of the master with every task ended, beside the same master empty (the target: within
  60 MiB), after the listing pages below (SQLite's page cache included), and after a kill
  -9 and restart on that database;
- restart: kill -9 to answering `/master/vars` and a first page again (target: 2 s),
  beside the same restart on an empty database;
- a page of 100 at the first, middle and last offsets, filtered by state and by name, over
  HTTP (median of 9), beside the same page read straight from the same SQLite file with the
  same indexes by `sqlite3` in this process (ids on the covering index, then their rows: the
  limit for any server in front of that file) — the ratio is raw / ours (target: 50 ms);
- `GET /master/vars` (target: 5 ms), beside `GET /health` (the libproc server's floor);
- status-update ingestion (`bench_master`'s fake slaves: 2,000 tasks launched, RUNNING and
  FINISHED, acknowledged) on the million-task database, beside the same on an empty one.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libproc
from benchmarks.bench_master import _drive
from libproc import UPID
from master.task_queries import prefix_end
from tests.cluster_harness import Cluster

BATCH = 10_000
PAGE = 100
LAST, MIDDLE = -1, -2  # offsets found from the filter's total


class Http:
    """One keep-alive connection to the master."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            raise
        return resp.status, resp.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        if status >= 300:
            raise SystemExit(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _median_ms(fn: Callable[[], object], n: int = 9) -> float:
    fn()  # warm
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _feed(api: Http, n: int, prefix: str) -> float:
    """Submit n tasks in batches, each batch ended by the bulk kill; tasks/s."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        size = min(BATCH, n - done)
        api.json("POST", "/master/tasks", [{"command": "true", "name": f"{prefix}{done + i}"}
                                           for i in range(size)])
        killed = api.json("POST", "/master/tasks/kill", {"state": ["PENDING"]})["killed"]
        if killed != size:
            raise SystemExit(f"bulk kill reached {killed} of {size} tasks")
        done += size
        if done % 100_000 == 0:
            print(f"  {done:,} tasks ended ({done / (time.perf_counter() - t0):,.0f}/s)",
                  flush=True)
    return n / (time.perf_counter() - t0)


def _restart(cluster: Cluster) -> tuple[float, Http]:
    """kill -9 the master, start it again; seconds until /master/vars and a page answer."""
    assert cluster.master is not None
    os.kill(cluster.master.pid, signal.SIGKILL)
    cluster.master.popen.wait(10)
    t0 = time.perf_counter()
    cluster.start_master(wait=False)
    api = Http(cluster.master_port)
    while True:
        try:
            if api.call("GET", "/master/vars")[0] == 200 and api.call(
                    "GET", "/master/tasks?limit=1")[0] == 200:
                return time.perf_counter() - t0, api
        except (OSError, http.client.HTTPException):
            pass
        if time.perf_counter() - t0 > 120:
            raise SystemExit("the master did not serve again within 120 s")
        time.sleep(0.01)


def _raw_page(db: Path, where: str, offset: int, desc: bool = False) -> Callable[[], object]:
    """The page read straight from the file: ids on a covering index, then their rows."""
    conn = sqlite3.connect(db)
    order = "length(id) DESC, id DESC" if desc else "length(id), id"

    def read() -> object:
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM tasks {where} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}")]
        marks = ",".join("?" * len(ids))
        return conn.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", ids).fetchall()

    return read


def _pages(api: Http, db: Path, n: int) -> list[tuple[str, float, float]]:
    middle, last = n // 2, n - PAGE
    name_prefix = "bench-5"  # 1 in 9 of the names (bench-5, bench-50..., bench-500000...)
    by_name = f"WHERE name >= '{name_prefix}' AND name < '{prefix_end(name_prefix)}'"
    shapes = [
        ("first page", "", "", 0, False),
        ("middle page", "", "", middle, False),
        ("last page", "", "", last, False),
        ("newest first, middle", "order=desc", "", middle, True),
        ("state=KILLED, middle", "state=KILLED", "WHERE state = 'KILLED'", middle, False),
        ("state=PENDING (10k), last", "state=PENDING", "WHERE state = 'PENDING'", LAST, False),
        (f"name={name_prefix}, first", f"name={name_prefix}", by_name, 0, False),
        (f"name={name_prefix}, middle", f"name={name_prefix}", by_name, MIDDLE, False),
        (f"name={name_prefix}+KILLED, middle", f"name={name_prefix}&state=KILLED",
         f"{by_name} AND state = 'KILLED'", MIDDLE, False),
        ("state=KILLED,LOST, middle", "state=KILLED,LOST", "WHERE state IN ('KILLED', 'LOST')",
         middle, False),
        # A prefix every KILLED task has filters nothing; one that all but the few active
        # `other-` tasks have is counted as the tasks less those.
        ("name=bench-+KILLED (every one), middle", "name=bench-&state=KILLED",
         "WHERE name >= 'bench-' AND name < 'bench.' AND state = 'KILLED'", MIDDLE, False),
        ("name=bench- (all but a few), middle", "name=bench-",
         "WHERE name >= 'bench-' AND name < 'bench.'", MIDDLE, False),
    ]
    rows = []
    for label, query, where, offset, desc in shapes:
        if offset < 0:  # LAST or MIDDLE of the matches
            total = api.json("GET", f"/master/tasks?{query}&limit=0")["total"]
            offset = max(0, total - PAGE) if offset == LAST else total // 2
        path = f"/master/tasks?limit={PAGE}&offset={offset}" + (f"&{query}" if query else "")
        page = api.json("GET", path)
        if not page["tasks"]:
            raise SystemExit(f"{label}: an empty page ({path})")
        ours = _median_ms(lambda p=path: api.json("GET", p))  # type: ignore[misc]
        raw = _median_ms(_raw_page(db, where, offset, desc))
        rows.append((label, ours, raw))
    return rows


async def _status_updates(cluster: Cluster, n: int) -> tuple[float, float]:
    """bench_master's fake slaves drive n tasks on this master: (tasks/s, CPU s/task)."""
    assert cluster.master is not None
    port = cluster.master_port
    body = [{"command": "true", "cpus": 1.0, "mem": 1, "name": "su"} for _ in range(n)]

    async def start() -> None:
        await asyncio.to_thread(Http(port).json, "POST", "/master/tasks", body)

    return await _drive(UPID("master", "127.0.0.1", port), 16.0, n, start, cluster.master.pid)


async def _bench(n: int, active: int, updates: int) -> None:
    await libproc.start(host="127.0.0.1", port=0)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        empty = Cluster(Path(tmp) / "empty", log_level="WARNING", slave_timeout=60.0)
        big = Cluster(Path(tmp) / "big", log_level="WARNING", slave_timeout=60.0)
        try:
            child = empty.start_master()
            api = Http(empty.master_port)
            time.sleep(1.0)
            rss_empty = _rss_mib(child.pid)
            vars_empty = _median_ms(lambda: api.call("GET", "/master/vars"), 21)
            restart_empty, api = _restart(empty)
            rate_empty, cpu_empty = await _status_updates(empty, updates)

            child = big.start_master()
            api = Http(big.master_port)
            print(f"feeding {n:,} tasks in batches of {BATCH:,} (each ended by the bulk kill)",
                  flush=True)
            feed_rate = _feed(api, n, "bench-")
            # Active tasks: bench-active-i, and one in 7 named other-i (no bench- prefix).
            api.json("POST", "/master/tasks", [
                {"command": "true", "name": f"{'other' if i % 7 == 0 else 'bench-active'}-{i}"}
                for i in range(active)])
            time.sleep(7.0)  # heartbeats: ended tasks past the cap leave memory, the heap trims
            rss_big = _rss_mib(big.master.pid)  # type: ignore[union-attr]
            vars_big = _median_ms(lambda: api.call("GET", "/master/vars"), 21)
            health_big = _median_ms(lambda: api.call("GET", "/health"), 21)
            pages = _pages(api, big.db, n)
            rss_listed = _rss_mib(big.master.pid)  # type: ignore[union-attr]
            restart_big, api = _restart(big)
            rss_restarted = _rss_mib(big.master.pid)  # type: ignore[union-attr]
            api.json("POST", "/master/tasks/kill", {"state": ["PENDING"]})
            rate_big, cpu_big = await _status_updates(big, updates)
            counts = api.call("GET", "/master/vars")[1].decode()
        finally:
            empty.close()
            big.close()
            await libproc.stop()
    total = next(line.split()[1] for line in counts.splitlines()
                 if line.startswith("tasks_total "))
    print(f"\nbench_scale: {n:,} ended + {active:,} active tasks (tasks_total {total}), "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; fed at "
          f"{feed_rate:,.0f} tasks/s (submit + bulk kill)")
    print(f"{'what':<34} {'at scale':>14} {'baseline':>14} {'ratio':>8}   baseline is")
    print(f"{'RSS, every task ended':<34} {rss_big:>10.1f} MiB {rss_empty:>10.1f} MiB "
          f"{rss_big - rss_empty:>+7.1f}M   the same master empty (target +60 MiB)")
    print(f"{'RSS after the pages below':<34} {rss_listed:>10.1f} MiB {rss_empty:>10.1f} MiB "
          f"{rss_listed - rss_empty:>+7.1f}M")
    print(f"{'RSS after kill -9 and restart':<34} {rss_restarted:>10.1f} MiB {rss_empty:>10.1f} "
          f"MiB {rss_restarted - rss_empty:>+7.1f}M")
    print(f"{'restart: kill -9 to serving':<34} {restart_big:>12.2f} s {restart_empty:>12.2f} s "
          f"{restart_big / restart_empty:>7.2f}x   an empty database (target 2 s)")
    print(f"{'GET /master/vars':<34} {vars_big:>11.2f} ms {vars_empty:>11.2f} ms "
          f"{vars_empty / vars_big:>7.2f}x   an empty master (target 5 ms); /health "
          f"{health_big:.2f} ms")
    for label, ours, raw in pages:
        print(f"{'page of 100: ' + label:<34} {ours:>11.2f} ms {raw:>11.2f} ms "
              f"{raw / ours:>7.2f}x   raw sqlite3, same file (target 50 ms)")
    print(f"{'status updates, ' + str(updates) + ' tasks':<34} {rate_big:>8,.0f} tasks/s "
          f"{rate_empty:>8,.0f} tasks/s {rate_big / rate_empty:>7.2f}x   an empty database")
    print(f"{'  master CPU per task':<34} {cpu_big * 1000:>11.2f} ms {cpu_empty * 1000:>11.2f} ms "
          f"{cpu_empty / cpu_big:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(_bench(args.tasks, args.active, args.updates))


if __name__ == "__main__":
    main()
