"""Benchmark: how long masters are leaderless when the leader dies, against a private ZooKeeper.

    python -m benchmarks.bench_election [--rounds 5] [--session-timeout 5] [--tick 0.2]

Needs Debian's zookeeper (scripts/ha-local.sh). Each round: a leader contends in an OS process
of its own (tests/ha/contender_child.py) and a standby in this one; then

* kill -9 of the leader: the time until the standby leads, beside the session timeout (the
  floor ZooKeeper sets: it keeps a silent session that long) as a ratio;
* SIGTERM of the leader (it withdraws: its znode goes at once): the time until the standby
  leads, beside one ZooKeeper round trip (a `get_children` of the path) measured in the
  same round.

Each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "ha")]

from contender_child import ChildContender  # noqa: E402
from kazoo.client import KazooClient  # noqa: E402

from ha_servers import ZooKeeperServer, missing_prerequisites  # noqa: E402
from master.election import LeaderContender  # noqa: E402
from protos.leader_info import LeaderInfo  # noqa: E402


async def _round(zk: ZooKeeperServer, path: str, session_timeout: float, how: int,
                 log: Path) -> tuple[float, float]:
    """One failover; returns (seconds leaderless, one get_children round trip)."""
    url = zk.url(path)
    child = ChildContender(url, 1, session_timeout, log)
    standby = LeaderContender(url, LeaderInfo("master@127.0.0.1:2", "http://127.0.0.1:2"),
                              session_timeout=session_timeout)
    client = KazooClient(hosts=zk.hosts)
    client.start(timeout=30)
    try:
        child.wait_for(lambda x: x["event"] == "status" and x["leading"], 30, "the leader")
        standby.start()
        while standby.member is None:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        client.get_children(path)
        round_trip = time.perf_counter() - started
        gone = child.signal(how)
        while not standby.leading:
            await asyncio.sleep(0.002)
        return time.monotonic() - gone, round_trip
    finally:
        client.stop()
        child.close()
        await standby.close()


async def run(rounds: int, session_timeout: float, tick: float) -> None:
    zk = ZooKeeperServer(tick=tick).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            killed, withdrawn, trips = [], [], []
            for i in range(rounds):
                took, trip = await _round(zk, f"/bench/kill{i}", session_timeout,
                                          signal.SIGKILL, Path(tmp) / f"k{i}.log")
                killed.append(took)
                took, trip = await _round(zk, f"/bench/term{i}", session_timeout,
                                          signal.SIGTERM, Path(tmp) / f"t{i}.log")
                withdrawn.append(took)
                trips.append(trip)
    finally:
        zk.close()
    kill, term, trip = (statistics.median(x) for x in (killed, withdrawn, trips))
    print(f"election failover, median of {rounds} (ZooKeeper tick {tick:g} s, "
          f"session timeout {session_timeout:g} s)")
    print(f"  kill -9 of the leader -> standby leads: {kill:6.3f} s   "
          f"session timeout {session_timeout:6.3f} s   ratio {kill / session_timeout:5.2f}x")
    print(f"  SIGTERM (withdraw)    -> standby leads: {term * 1000:6.1f} ms  "
          f"one ZooKeeper round trip {trip * 1000:5.2f} ms   ratio {term / trip:5.1f}x")
    print(f"  every kill -9 round: {', '.join(f'{x:.2f}' for x in killed)} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--session-timeout", type=float, default=5.0)
    parser.add_argument("--tick", type=float, default=0.2, help="ZooKeeper's tickTime, s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the figures only: every round withdraws
    missing = missing_prerequisites()
    if missing:
        print("bench_election NOT RUN: " + "; ".join(missing)
              + " (run scripts/ha-local.sh as root)", file=sys.stderr)
        return 1
    asyncio.run(run(args.rounds, args.session_timeout, args.tick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
