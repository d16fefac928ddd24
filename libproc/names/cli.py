"""The name service's command line: `python -m libproc.names [serve|list|watch] ...`.

`serve` (the default) runs a name service; `list QUERY` prints the instances that match;
`watch QUERY` prints them, then one line per Online/Offline notice until interrupted (`--json`:
one JSON object a line). Bad arguments exit 2, an unreachable name service 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from libproc import runtime
from libproc.names.client import connect, parse_names_pid, watch
from libproc.names.model import Instance, InvalidNameError, NamesError, parse_query
from libproc.names.service import DEFAULT_ID, NameService

__all__ = ["main"]


def _instance_json(inst: Instance) -> dict[str, str]:
    return {"name": inst.name, "pid": str(inst.pid), "user_data": inst.user_data}


async def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    await runtime.start(host=args.host, port=args.port, advertise_host=args.advertise_host)
    service = NameService(args.id, secret=args.secret, heartbeat_timeout=args.heartbeat_timeout,
                          heartbeat_interval=args.heartbeat_interval, recovery=args.recovery)
    pid = runtime.spawn(service)
    print(f"name service listening at {pid}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runtime.stop()
    return 0


async def _watch(args: argparse.Namespace) -> int:
    try:
        parse_query(args.query)
        ns = parse_names_pid(args.names)
    except (InvalidNameError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    await runtime.start(host=args.host, port=0)
    try:
        connect(ns, secret=args.secret)
        w = watch(args.query, replay=False)
        try:
            current = await asyncio.wait_for(_wait(w.ready), args.timeout)
        except TimeoutError:
            print(f"error: the name service {ns} did not answer within {args.timeout:g}s",
                  file=sys.stderr)
            return 1
        except NamesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for inst in current:
            _print(args, "instance", inst, "")
        if args.command == "list":
            return 0
        if args.json:
            print(json.dumps({"event": "ready", "query": args.query, "count": len(current)}),
                  flush=True)
        else:
            print(f"# watching {args.query} at {ns}: {len(current)} instance(s)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def follow() -> None:
            async for notice in w:
                _print(args, notice.kind, notice.instance, notice.reason)

        task = asyncio.ensure_future(follow())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopper.cancel()
        return 0
    finally:
        await runtime.stop()


async def _wait(f: Any) -> Any:
    return await f


def _print(args: argparse.Namespace, kind: str, inst: Instance, reason: str) -> None:
    if args.json:
        line = json.dumps({"event": kind, **_instance_json(inst), "reason": reason})
    else:
        line = f"{kind:<8} {inst.name:<30} {inst.pid}  {inst.user_data!r}" + (
            f"  ({reason})" if reason else "")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("serve", "list", "watch") else "serve"
    if argv and argv[0] == command:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog=f"python -m libproc.names {command}",
        description="libproc's name service" if command == "serve"
        else f"{command} the instances matching a query")
    parser.add_argument("--host", default="127.0.0.1", help="IP to bind (default 127.0.0.1)")
    parser.add_argument("--secret", default=None, help="the shared secret")
    if command == "serve":
        parser.add_argument("--port", type=int, default=5055)
        parser.add_argument("--advertise-host", default=None)
        parser.add_argument("--id", default=DEFAULT_ID, help="process id (default: names)")
        parser.add_argument("--heartbeat-timeout", type=float, default=5.0,
                            help="seconds of silence before a client's instances go Offline")
        parser.add_argument("--heartbeat-interval", type=float, default=None,
                            help="seconds between pings (default: a third of the timeout)")
        parser.add_argument("--recovery", type=float, default=3.0,
                            help="seconds after start during which snapshots say 'recovering'")
        parser.add_argument("--log-level", default="info",
                            choices=["debug", "info", "warning", "error"])
    else:
        parser.add_argument("query", help="e.g. demo.pong")
        parser.add_argument("--names", default="names@127.0.0.1:5055",
                            help="the name service's UPID (default names@127.0.0.1:5055)")
        parser.add_argument("--json", action="store_true", help="one JSON object a line")
        parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    args.command = command
    try:
        return asyncio.run(_serve(args) if command == "serve" else _watch(args))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
