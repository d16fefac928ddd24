"""Ping-pong through the name service: messages addressed to a service name, not a UPID.

    python -m libproc.names --port 5055                                   # the name service
    python -m examples.mesh_pingpong --name demo.pong.dev.1               # pong instances...
    python -m examples.mesh_pingpong --name demo.pong.dev.2
    python -m examples.mesh_pingpong --name demo.ping.dev.1 --is-ping --target demo.pong \
        --count 1000

Every instance registers its name. The ping sends a sequence number to the service
`--target` with a stateless send (round robin over the online instances); whoever receives a
number sends the number plus one back to its sender; the ping then sends the next number to
the service again, until the number passes `--count`. Then it prints how the messages spread
over the instances.

Kill a pong midway: the ping sees it Offline (at once for a killed process) and stops
choosing it; a number whose answer does not come back within `--timeout` is sent again, to
the next instance, so every number is answered once and none is lost. The last line is a
JSON summary (`summary {...}`) with the spread, the re-sends, and how many numbers were
sent to an instance after its Offline notice (always 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import libproc
from libproc import UPID, Process, names
from libproc.clock import Timer

SEQ = "mesh_pingpong.seq"


class PingPong(Process):
    """One instance: answers numbers; with `is_ping`, also drives the sequence."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("pingpong")
        self.args = args
        self.answered = 0  # numbers this instance answered (as a pong)
        self.done: libproc.Promise[dict[str, Any]] = libproc.Promise()
        # ping side
        self.started = False
        self.outstanding = 0
        self.sent_to: names.Instance | None = None
        self.timer: Timer | None = None
        self.spread: Counter[str] = Counter()
        self.resent: list[int] = []
        self.late = 0
        self.offline: set[str] = set()
        self.sent_after_offline = 0
        self.t0 = 0.0

    def initialize(self) -> None:
        self.mesh = names.Mesh(self)
        self.install(SEQ, self._seq)
        self.linked: set[UPID] = set()
        user_data = f"os-pid={os.getpid()}"
        self.registered = self.mesh.register(self.args.name, user_data=user_data)
        self.registered.on_ready(lambda inst: print(f"registered {inst.name} at {inst.pid}",
                                                    flush=True))
        self.registered.on_failed(lambda why: self.done.fail(f"registration failed: {why}"))
        if self.args.is_ping:
            self.mesh.watch(self.args.target, self._notice)

    # -- both sides ---------------------------------------------------------------------

    def _seq(self, sender: UPID, body: bytes) -> None:
        n = int(body)
        if self.args.is_ping:
            self._answer(sender, n)
            return
        if sender not in self.linked:  # keep one connection to a peer we talk to often
            self.linked.add(sender)
            self.link(sender)
        self.answered += 1
        self.send(sender, SEQ, b"%d" % (n + 1))

    def exited(self, pid: UPID) -> None:
        self.linked.discard(pid)

    # -- ping side ----------------------------------------------------------------------

    def _notice(self, notice: names.Notice) -> None:
        inst = notice.instance
        if inst.pid == self.pid:
            return
        print(f"{notice.kind} {inst.name} {inst.pid} {inst.user_data}"
              + (f" ({notice.reason})" if notice.reason else ""), flush=True)
        if notice.online:
            self.offline.discard(inst.name)
        else:
            self.offline.add(inst.name)
        others = [i for i in self.mesh.lookup(self.args.target) if i.pid != self.pid]
        if not self.started and len(others) >= self.args.wait_for:
            self.started = True
            self.t0 = time.perf_counter()
            self._send(1)

    def _send(self, n: int) -> None:
        self.outstanding = n
        f = self.mesh.send_stateless(self.args.target, SEQ, b"%d" % n)
        if f.is_failed():  # nobody online now: try again after the timeout
            print(f"no instance for {n}: {f.failure()}", flush=True)
            self.sent_to = None
        else:
            self.sent_to = f.get()
            if self.sent_to.name in self.offline:
                self.sent_after_offline += 1
        self.timer = libproc.delay(self.args.timeout, self.pid, self._expired, n)

    def _expired(self, n: int) -> None:
        if n != self.outstanding:
            return
        who = self.sent_to.name if self.sent_to else "nobody"
        print(f"resend {n} (no answer from {who} within {self.args.timeout:g}s)", flush=True)
        self.resent.append(n)
        self._send(n)

    def _answer(self, sender: UPID, m: int) -> None:
        if m != self.outstanding + 1:
            self.late += 1  # the answer to a number already re-sent and answered
            return
        if self.timer is not None:
            self.timer.cancel()
        inst = self.mesh.instance_of(sender)
        self.spread[inst.name if inst else str(sender)] += 1
        answered = sum(self.spread.values())
        if answered % self.args.report_every == 0:
            print(f"progress {answered}", flush=True)
        if m + 1 > self.args.count:
            self.outstanding = 0
            self.done.set(self._summary(answered, m))
            return
        if self.args.pace > 0:
            libproc.delay(self.args.pace, self.pid, self._send, m + 1)
        else:
            self._send(m + 1)

    def _summary(self, answered: int, last: int) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        return {"answered": answered, "last": last, "count": self.args.count,
                "spread": dict(sorted(self.spread.items())), "resent": self.resent,
                "late_answers": self.late, "sent_after_offline": self.sent_after_offline,
                "seconds": round(elapsed, 3)}


async def run(args: argparse.Namespace) -> int:
    await libproc.start(host=args.host, port=args.port)
    names.connect(args.names, secret=args.secret)
    proc = PingPong(args)
    libproc.spawn(proc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.ensure_future(_await(proc.done.future))
    stopper = asyncio.ensure_future(stop.wait())
    finished, _ = await asyncio.wait([done, stopper], timeout=args.deadline,
                                     return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    code = 0
    if done in finished:
        try:
            summary = done.result()
        except Exception as exc:  # noqa: BLE001 - reported as one line
            print(f"error: {exc}", file=sys.stderr, flush=True)
            code = 1
        else:
            spread = ", ".join(f"{k}={v}" for k, v in summary["spread"].items())
            print(f"spread over instances: {spread}", flush=True)
            print(f"re-sent {len(summary['resent'])} number(s): {summary['resent']}", flush=True)
            print("summary " + json.dumps(summary), flush=True)
    else:
        done.cancel()
        if args.is_ping and not stop.is_set():
            print(f"error: not done within {args.deadline:g}s", file=sys.stderr, flush=True)
            code = 1
    if not args.is_ping:
        print(f"{args.name} answered {proc.answered} numbers", flush=True)
    await libproc.stop()
    return code


async def _await(f: libproc.Future[Any]) -> Any:
    return await f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.mesh_pingpong", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="this instance's name, e.g. demo.pong.dev.1")
    p.add_argument("--is-ping", action="store_true", help="drive the sequence")
    p.add_argument("--target", default="demo.pong", help="service to send to (query)")
    p.add_argument("--count", type=int, default=1000, help="stop when the number passes it")
    p.add_argument("--names", default="names@127.0.0.1:5055", help="the name service's UPID")
    p.add_argument("--secret", default=None)
    p.add_argument("--timeout", type=float, default=0.5,
                   help="seconds to wait for an answer before re-sending a number")
    p.add_argument("--wait-for", type=int, default=1,
                   help="online target instances to wait for before starting")
    p.add_argument("--pace", type=float, default=0.0, help="seconds between numbers")
    p.add_argument("--report-every", type=int, default=100)
    p.add_argument("--deadline", type=float, default=3600.0,
                   help="give up after this many seconds (ping), or run this long (pong)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    try:
        names.parse_name(args.name)
        names.parse_query(args.target)
    except names.InvalidNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
