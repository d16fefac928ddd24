"""Ping-pong over libprocess's wire format: the program used to test interoperability.

    python -m examples.pingpong serve --port P
        process "pong": on raw message "ping", link the sender, send "pong" with the same body
    python -m examples.pingpong ping --to pong@HOST:P --count N [--port Q]
        process "ping": send N "ping"s, count the "pong"s, print messages/s

Both sides link before talking (see DESIGN.md §2.1: a libprocess sender that does not link
loses messages in a burst).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import libproc
from libproc import UPID, Process


class Pong(Process):
    def __init__(self) -> None:
        super().__init__("pong")
        self.linked: set[UPID] = set()
        self.count = 0

    def initialize(self) -> None:
        self.install("ping", self.ping)

    def ping(self, sender: UPID, body: bytes) -> None:
        if sender not in self.linked:
            self.linked.add(sender)
            self.link(sender)
        self.count += 1
        self.send(sender, "pong", body)

    def exited(self, pid: UPID) -> None:
        self.linked.discard(pid)


class Ping(Process):
    def __init__(self, to: UPID, count: int, size: int) -> None:
        super().__init__("ping")
        self.to = to
        self.count = count
        self.body = b"x" * size
        self.received = 0
        self.done: libproc.Promise[float] = libproc.Promise()
        self.started = 0.0

    def initialize(self) -> None:
        self.install("pong", self.pong)
        self.link(self.to)
        self.started = time.perf_counter()
        for _ in range(self.count):
            self.send(self.to, "ping", self.body)

    def pong(self, sender: UPID, body: bytes) -> None:
        self.received += 1
        if self.received >= self.count:
            self.done.set(time.perf_counter() - self.started)

    def exited(self, pid: UPID) -> None:
        self.done.fail(f"lost the connection to {pid}")


async def serve(args: argparse.Namespace) -> int:
    address = await libproc.start(host=args.host, port=args.port,
                                  advertise_host=args.advertise_host)
    pong = Pong()
    libproc.spawn(pong)
    print(f"pong listening at {pong.pid}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"pong answered {pong.count} pings", flush=True)
    await libproc.stop()
    del address
    return 0


async def ping(args: argparse.Namespace) -> int:
    try:
        to = UPID.parse(args.to)
    except libproc.InvalidUPIDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    await libproc.start(host=args.host, port=args.port, advertise_host=args.advertise_host)
    pinger = Ping(to, args.count, args.size)
    libproc.spawn(pinger)
    try:
        elapsed = await asyncio.wait_for(asyncio.ensure_future(_await(pinger.done.future)),
                                         args.timeout)
    except TimeoutError:
        print(f"error: received {pinger.received} of {args.count} pongs within {args.timeout}s",
              file=sys.stderr)
        await libproc.stop()
        return 1
    except libproc.FutureFailedError as exc:
        print(f"error: {exc} after {pinger.received} of {args.count} pongs", file=sys.stderr)
        await libproc.stop()
        return 1
    rate = args.count / elapsed if elapsed > 0 else float("inf")
    print(f"received {pinger.received} pongs of {args.count} in {elapsed:.3f}s: "
          f"{rate:,.0f} messages/s", flush=True)
    await libproc.stop()
    return 0


async def _await(f: libproc.Future[float]) -> float:
    return await f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.pingpong", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run process 'pong'")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--advertise-host", default=None)
    p = sub.add_parser("ping", help="run process 'ping' against a pong")
    p.add_argument("--to", required=True, help="the pong's UPID, e.g. pong@127.0.0.1:5555")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--advertise-host", default=None)
    p.add_argument("--size", type=int, default=32, help="body size in bytes")
    p.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    return asyncio.run(serve(args) if args.command == "serve" else ping(args))


if __name__ == "__main__":
    sys.exit(main())
