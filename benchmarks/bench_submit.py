"""Submits: many clients each POSTing one task at a time to a real master.

    python -m benchmarks.bench_submit [--submits 2000] [--clients 16]

Every answer with ids means durable tasks, so each submit costs a database transaction; the
store batches the transactions of concurrent submits, and the master's mailbox never waits
on them (ids are allocated and rows inserted from the HTTP handler, then the committed
records are handed to the actor). The master runs in its own OS process on a SQLite file,
with no slaves: the tasks stay PENDING, so only submits are measured.

The baseline, in the same run and against the same master, is the same number of requests
from the same clients to `GET /master/vars`: the HTTP path through the master's mailbox
with no body to parse and no database. The ratio is submits/s over that.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster_harness import Child, Cluster


def _load(port: int, clients: int, total: int,
          one: Callable[[http.client.HTTPConnection], int]) -> float:
    """Requests/s for `total` requests over `clients` keep-alive connections in threads."""
    per = total // clients
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(per):
                status = one(conn)
                if status >= 300:
                    errors.append(str(status))
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"requests failed: {errors[:5]}")
    return per * clients / elapsed


def _submit(conn: http.client.HTTPConnection) -> int:
    conn.request("POST", "/master/tasks", body=b'{"command": "true", "cpus": 0.1}',
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status == 201:
        json.loads(body)
    return resp.status


def _vars(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/master/vars")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _cpu(child: Child) -> float:
    return child.cpu_secs()


def run(submits: int, clients: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        cluster = Cluster(Path(tmp), log_level="WARNING")
        try:
            child = cluster.start_master()
            port = cluster.master_port
            _load(port, clients, clients * 20, _vars)  # warm up connections and code paths
            cpu0 = _cpu(child)
            base_rate = _load(port, clients, submits, _vars)
            base_cpu = (_cpu(child) - cpu0) / submits
            cpu0 = _cpu(child)
            rate = _load(port, clients, submits, _submit)
            cpu = (_cpu(child) - cpu0) / submits
            stored = int(cluster.api.vars()["tasks_total"])
            batches = cluster.api.vars()["store_batches_committed"]
        finally:
            cluster.close()
    if stored != submits // clients * clients:
        raise SystemExit(f"{stored} tasks stored for {submits} submits")
    print(f"\nbench_submit: {submits} submits of one task from {clients} clients, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    print(f"{'':<26} {'requests/s':>12} {'master CPU/request':>20}")
    print(f"{'POST /master/tasks':<26} {rate:>12,.0f} {cpu * 1000:>17.2f} ms")
    print(f"{'GET /master/vars (base)':<26} {base_rate:>12,.0f} {base_cpu * 1000:>17.2f} ms")
    print(f"ratio {rate / base_rate:.2f}x; {stored} tasks stored in {batches} commits in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    run(args.submits, args.clients)


if __name__ == "__main__":
    main()
