"""libproc's message throughput and latency, each beside a baseline measured in the same run.

    python -m benchmarks.bench_libproc            # or: python -m benchmarks
    python -m benchmarks.bench_libproc --local-only --runs 5
    python -m benchmarks.bench_libproc --count 20000 --runs 3 --round-trips 2000

Local, in this OS process's CPU time (benchmarks/local.py; steadier than wall time on a shared
machine), each the median of `--runs` runs, libproc and its baselines interleaved; a ratio is
the median over rounds of libproc / baseline within the round:

1. Local messages: two processes, a burst of pings each answered by a pong (`send`), against
   two asyncio tasks passing the same items through two asyncio.Queues. Target >= 0.6x.
2. Local dispatch: `--dispatches` calls of `libproc.dispatch(pid, Sink.hit)`, a method that only
   counts, awaiting the last; against Pykka 4.5's `ThreadingActor` tell (target >= 3x) and a
   plain asyncio queue actor (a task calling what it takes off an asyncio.Queue; target >= 0.3x).
3. One call at a time: `--asks` times `await libproc.dispatch(pid, Sink.hit)`, against an
   asyncio.Future completed by `loop.call_soon` and awaited. Target >= 0.9x.

Remote, over loopback:

4. Pipelined: `examples.pingpong ping` against `examples.pingpong serve` (two OS processes),
   against a plain asyncio-streams peer pair speaking the same wire format
   (start_server/open_connection, parsing with readuntil/readexactly) in the same two roles.
   Also the pong process's CPU per message, read from /proc/<pid>/stat.
5. Round-trip latency, one message at a time, p50/p99, for both.

The baseline peer runs as `python -m benchmarks.bench_libproc baseline-serve|baseline-ping`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import local

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


# -- the baseline: a libprocess peer on plain asyncio streams ---------------------------


def encode(sender: str, to_id: str, name: str, host: str, body: bytes) -> bytes:
    """libprocess's request, byte for byte (DESIGN.md §2.1)."""
    head = (
        f"POST /{to_id}/{name} HTTP/1.1\r\nUser-Agent: libprocess/{sender}\r\n"
        f"Libprocess-From: {sender}\r\nConnection: Keep-Alive\r\nHost: {host}\r\n"
    )
    if not body:
        return (head + "\r\n").encode()
    return b"%sTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        head.encode(),
        len(body),
        body,
    )


class StreamsPeer:
    """Receives messages with start_server + readuntil/readexactly, answers 202 on the same
    connection, and sends on its own persistent connection per peer address."""

    def __init__(self, pid_id: str, on_message: Callable[[str, str, bytes], None]) -> None:
        self.id = pid_id
        self.on_message = on_message
        self.upid = ""
        self.out: dict[tuple[str, int], asyncio.StreamWriter | list[bytes]] = {}
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, host: str, port: int) -> str:
        self.server = await asyncio.start_server(self._serve, host, port)
        bound_host, bound_port = self.server.sockets[0].getsockname()[:2]
        self.upid = f"{self.id}@{bound_host}:{bound_port}"
        return self.upid

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                target = lines[0].split(b" ")[1]
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(b":")
                    headers[key.strip().lower()] = value.strip()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    parts = []
                    while True:
                        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        parts.append((await reader.readexactly(size + 2))[:-2])
                    body = b"".join(parts)
                else:
                    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                writer.write(ACCEPTED)
                name = target.decode().split("/", 2)[2]
                self.on_message(headers[b"libprocess-from"].decode(), name, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def send(self, to: str, name: str, body: bytes) -> None:
        to_id, _, address = to.rpartition("@")
        host, _, port = address.rpartition(":")
        key = (host, int(port))
        data = encode(self.upid, to_id, name, address, body)
        conn = self.out.get(key)
        if conn is None:
            self.out[key] = [data]
            asyncio.ensure_future(self._connect(key))
        elif isinstance(conn, list):
            conn.append(data)
        else:
            conn.write(data)

    async def _connect(self, key: tuple[str, int]) -> None:
        reader, writer = await asyncio.open_connection(*key)
        pending = self.out[key]
        assert isinstance(pending, list)
        self.out[key] = writer
        writer.write(b"".join(pending))
        try:
            while await reader.read(65536):  # the 202s: read and discarded
                pass
        except ConnectionError:
            pass
        self.out.pop(key, None)
        writer.close()


async def baseline_serve(port: int) -> None:
    pong: StreamsPeer

    def on_message(sender: str, name: str, body: bytes) -> None:
        if name == "ping":
            pong.send(sender, "pong", body)

    pong = StreamsPeer("pong", on_message)
    print(f"pong listening at {await pong.listen('127.0.0.1', port)}", flush=True)
    await asyncio.Event().wait()


async def baseline_ping(to: str, count: int, size: int) -> None:
    done = asyncio.Event()
    received = 0

    def on_message(sender: str, name: str, body: bytes) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    ping = StreamsPeer("ping", on_message)
    await ping.listen("127.0.0.1", 0)
    body = b"x" * size
    started = time.perf_counter()
    for _ in range(count):
        ping.send(to, "ping", body)
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - started
    print(
        f"received {received} pongs of {count} in {elapsed:.3f}s: "
        f"{count / elapsed:,.0f} messages/s",
        flush=True,
    )


# -- measurement helpers --------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of an OS process, from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(args: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a pong server; yields it and the UPID it prints."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline().decode() if ready else ""
        if "listening at" not in line:
            raise RuntimeError(f"{' '.join(args)} did not start: {line!r}")
        yield proc, line.split()[-1]
    finally:
        proc.kill()
        proc.wait(10)


def run_ping(args: list[str]) -> float:
    """Run a ping client; returns its elapsed seconds."""
    out = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    text = out.stdout.decode()
    if out.returncode != 0 or " in " not in text:
        raise RuntimeError(f"{' '.join(args)} failed: {text}{out.stderr.decode()[-2000:]}")
    return float(text.split(" in ")[1].split("s:")[0])


def measure_pipelined(
    pong: subprocess.Popen[bytes], ping_args: list[str], count: int
) -> tuple[float, float | None]:
    """One pipelined run: (round trips/s, pong CPU seconds per message or None)."""
    before = cpu_seconds(pong.pid)
    elapsed = run_ping(ping_args)
    after = cpu_seconds(pong.pid)
    cpu = None if before is None or after is None else (after - before) / count
    return count / elapsed, cpu


# -- the three benchmarks -------------------------------------------------------------


async def latency_libproc(to_text: str, n: int) -> list[float]:
    import libproc
    from libproc import UPID, Process, Promise

    class Ping(Process):
        def __init__(self) -> None:
            super().__init__(prefix="latency-ping")
            self.waiter: Promise[None] = Promise()

        def initialize(self) -> None:
            self.install("pong", lambda sender, body: self.waiter.set(None))

    to = UPID.parse(to_text)
    ping = Ping()
    libproc.spawn(ping)
    ping.link(to)
    body = b"x" * 32
    samples = []
    for i in range(n + 50):
        ping.waiter = Promise()
        started = time.perf_counter()
        ping.send(to, "ping", body)
        await asyncio.wait_for(_await(ping.waiter.future), 10)
        if i >= 50:  # the first round trips open the connections
            samples.append(time.perf_counter() - started)
    libproc.terminate(ping)
    await libproc.wait(ping)
    return samples


async def _await(f: object) -> object:
    return await f  # type: ignore[misc]


async def latency_baseline(to: str, n: int) -> list[float]:
    waiter = asyncio.Event()
    ping = StreamsPeer("latency-ping", lambda sender, name, body: waiter.set())
    await ping.listen("127.0.0.1", 0)
    body = b"x" * 32
    samples = []
    for i in range(n + 50):
        waiter.clear()
        started = time.perf_counter()
        ping.send(to, "ping", body)
        await asyncio.wait_for(waiter.wait(), 10)
        if i >= 50:
            samples.append(time.perf_counter() - started)
    assert ping.server is not None
    ping.server.close()
    for conn in ping.out.values():
        if not isinstance(conn, list):
            conn.close()
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.1f} us"


Measure = Callable[[], Awaitable[float] | float]


async def _medians(runs: int, measures: list[tuple[str, Measure]]) -> dict[str, list[float]]:
    """Each measure `runs` times, interleaved (one of each per round); the samples by name."""
    samples: dict[str, list[float]] = {name: [] for name, _ in measures}
    for _ in range(runs):
        for name, measure in measures:
            gc.collect()  # each starts from the same heap, not the last one's garbage
            result = measure()
            samples[name].append(await result if inspect.isawaitable(result) else result)
    return samples


def _row(label: str, samples: list[float], unit: str) -> str:
    runs = ", ".join(f"{v:,.0f}" for v in samples)
    return f"   {label:<38}{statistics.median(samples):>12,.0f} {unit}   (runs: {runs})"


def _target(label: str, ours: list[float], theirs: list[float], at_least: float) -> str:
    """The median over rounds of ours / theirs in the same round (a round's two runs share
    the machine's load), against the target."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    value = statistics.median(ratios)
    verdict = "met" if value >= at_least else "NOT met"
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return (f"   {label:<38}{value:>12.2f}x      (target >= {at_least}x: {verdict}; "
            f"rounds {spread})")


async def _section(title: str, runs: int, unit: str, rows: list[tuple[str, Measure | None]],
                   targets: list[tuple[str, str, str, float]]) -> None:
    """Print a local section: each row's median (a None measure: "not installed"), then each
    target (its label, our row's label, the baseline's, the ratio it must reach)."""
    s = await _medians(runs, [(label, m) for label, m in rows if m is not None])
    print(f"\n{title} (CPU time, median of {runs})")
    for label, m in rows:
        if m is None:
            print(f"   {label:<38}not installed: pip install -e '.[test]'")
        else:
            print(_row(label, s[label], unit))
    for name, ours, theirs, at_least in targets:
        if ours in s and theirs in s:
            print(_target(name, s[ours], s[theirs], at_least))


async def bench_local(args: argparse.Namespace) -> None:
    """Sections 1-3 (see the module docstring); libproc must be running."""
    n, runs = args.local, args.runs
    await _section(
        f"1. Local messages, two processes in one OS process ({n:,} pings + {n:,} pongs)",
        runs, "msg/s",
        [("libproc send", lambda: local.send_pair(n)),
         ("baseline: asyncio.Queue pair", lambda: local.queue_pair(n))],
        [("libproc / asyncio.Queue pair", "libproc send", "baseline: asyncio.Queue pair", 0.6)])
    n = args.dispatches
    pykka: Measure | None = (lambda: local.pykka_tell(n)) if local.has_pykka() else None
    await _section(
        f"2. Local dispatch: {n:,} calls of a method that only counts, awaiting the last",
        runs, "calls/s",
        [("libproc dispatch(pid, Sink.hit)", lambda: local.dispatch_burst(n)),
         ("Pykka 4.5 ThreadingActor tell", pykka),
         ("baseline: asyncio queue actor", lambda: local.queue_actor(n))],
        [("libproc / Pykka tell", "libproc dispatch(pid, Sink.hit)",
          "Pykka 4.5 ThreadingActor tell", 3.0),
         ("libproc / asyncio queue actor", "libproc dispatch(pid, Sink.hit)",
          "baseline: asyncio queue actor", 0.3)])
    n = args.asks
    await _section(
        f"3. One call at a time: {n:,} x `await libproc.dispatch(pid, Sink.hit)`",
        runs, "calls/s",
        [("libproc await dispatch", lambda: local.ask_one_at_a_time(n)),
         ("baseline: asyncio future round trip", lambda: local.future_round_trip(n))],
        [("libproc / asyncio future round trip", "libproc await dispatch",
          "baseline: asyncio future round trip", 0.9)])


async def bench_all(args: argparse.Namespace) -> None:
    import libproc
    from libproc import wire

    t0 = time.perf_counter()
    print(
        f"libproc benchmark: Python {platform.python_version()} on {platform.system()}, "
        f"{os.cpu_count()} CPUs; each figure beside a baseline measured in this run"
    )
    del wire

    await libproc.start(host="127.0.0.1", port=0)
    try:
        await bench_local(args)
        if args.local_only:
            return
        # 4 and 5. remote
        count, size = args.count, args.size
        with (
            server(["examples.pingpong", "serve", "--port", "0"]) as (lp, lp_to),
            server(["benchmarks.bench_libproc", "baseline-serve"]) as (bp, bp_to),
        ):
            lp_ping = [
                "examples.pingpong",
                "ping",
                "--to",
                lp_to,
                "--count",
                str(count),
                "--size",
                str(size),
            ]
            bp_ping = [
                "benchmarks.bench_libproc",
                "baseline-ping",
                "--to",
                bp_to,
                "--count",
                str(count),
                "--size",
                str(size),
            ]
            # Warm up both servers (imports, first connections), then interleave the runs.
            run_ping(lp_ping[:-4] + ["--count", "2000", "--size", str(size)])
            run_ping(bp_ping[:-4] + ["--count", "2000", "--size", str(size)])
            lp_runs, bp_runs = [], []
            for _ in range(args.runs):
                lp_runs.append(measure_pipelined(lp, lp_ping, count))
                bp_runs.append(measure_pipelined(bp, bp_ping, count))
            lp_rate = statistics.median(r for r, _ in lp_runs)
            bp_rate = statistics.median(r for r, _ in bp_runs)
            lp_cpu = _median_or_none([c for _, c in lp_runs])
            bp_cpu = _median_or_none([c for _, c in bp_runs])
            print(
                f"\n4. Remote pipelined ping-pong, two OS processes over loopback "
                f"({count:,} x {size} B, median of {args.runs})"
            )
            print("                                   round trips/s   pong CPU/message")
            print(f"   libproc (examples.pingpong)    {lp_rate:>12,.0f}   {us(lp_cpu):>16}")
            print(f"   baseline: asyncio streams      {bp_rate:>12,.0f}   {us(bp_cpu):>16}")
            print(
                f"   libproc / baseline             {ratio(lp_rate, bp_rate):>12}"
                f"   (target >= 0.8x: {'met' if lp_rate >= 0.8 * bp_rate else 'NOT met'})"
            )
            print(
                "   runs (round trips/s): libproc "
                + ", ".join(f"{r:,.0f}" for r, _ in lp_runs)
                + "; baseline "
                + ", ".join(f"{r:,.0f}" for r, _ in bp_runs)
            )

            n = args.round_trips
            lp_lat = await latency_libproc(lp_to, n)
            bp_lat = await latency_baseline(bp_to, n)
            print(f"\n5. Remote round-trip latency, one message at a time ({n:,} round trips)")
            print("                                          p50          p99")
            print(
                f"   libproc                        {us(percentile(lp_lat, 0.5)):>12} "
                f"{us(percentile(lp_lat, 0.99)):>12}"
            )
            print(
                f"   baseline: asyncio streams      {us(percentile(bp_lat, 0.5)):>12} "
                f"{us(percentile(bp_lat, 0.99)):>12}"
            )
            print(
                f"   libproc / baseline (p50)       "
                f"{ratio(percentile(lp_lat, 0.5), percentile(bp_lat, 0.5)):>12}"
                "  (lower is better)"
            )
    finally:
        await libproc.stop()
        print(f"\n(total {time.perf_counter() - t0:.1f}s)")


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_libproc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "mode", nargs="?", default="all", choices=["all", "baseline-serve", "baseline-ping"]
    )
    parser.add_argument("--count", type=int, default=20_000, help="pipelined pings per run")
    parser.add_argument("--size", type=int, default=32, help="body bytes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--local", type=int, default=200_000, help="local pings per run")
    parser.add_argument("--dispatches", type=int, default=200_000,
                        help="dispatches per run (section 2)")
    parser.add_argument("--asks", type=int, default=50_000,
                        help="one-at-a-time dispatches per run (section 3)")
    parser.add_argument("--local-only", action="store_true",
                        help="sections 1-3 only (no second OS process)")
    parser.add_argument("--port", type=int, default=0, help="baseline-serve's port")
    parser.add_argument("--to", help="baseline-ping's target pong@host:port")
    args = parser.parse_args(argv)
    if args.mode == "baseline-serve":
        asyncio.run(baseline_serve(args.port))
    elif args.mode == "baseline-ping":
        asyncio.run(baseline_ping(args.to, args.count, args.size))
    else:
        asyncio.run(bench_all(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
