"""The seed's first program: a process with a `/vars` route and a `stop` message.

    python -m examples.vars_stop

Part 1 talks to the process over real HTTP, as a browser and a libprocess peer would: it
GETs `/<id>/vars`, then POSTs the message `stop` in libprocess's wire format, whose handler
terminates the process. Part 2 is the seed's `main()`: `func1` returns a future that `func2(42)`
completes, and `func1` arranges (with `defer`) for the process to terminate itself then.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp

import libproc
from libproc import UPID, Future, Process, Promise


class MyProcess(Process):
    def __init__(self, id: str) -> None:  # noqa: A002
        super().__init__(id)
        self.promise: Promise[int] = Promise()

    def initialize(self) -> None:
        self.route("/vars", lambda request: "... vars here ...")
        self.install("stop", self.stop)

    def func1(self) -> Future[int]:
        # When the promise completes, come back onto this process and terminate it.
        self.promise.future.on_any(libproc.defer(self.pid, lambda _: libproc.terminate(self.pid)))
        return self.promise.future

    def func2(self, i: int) -> None:
        self.promise.set(i)

    def stop(self, sender: UPID, body: bytes) -> None:
        print(f"{self.id}: got 'stop' from {sender}; terminating", flush=True)
        libproc.terminate(self.pid)

    def finalize(self) -> None:
        print(f"{self.id}: finalize", flush=True)


async def main() -> int:
    address = await libproc.start(host="127.0.0.1", port=0)
    base = f"http://{address.host}:{address.port}"

    # Part 1: /vars and the 'stop' message, over HTTP.
    pid = libproc.spawn(MyProcess("vars-stop"))
    print(f"spawned {pid}", flush=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/{pid.id}/vars") as response:
            print(
                f"GET /{pid.id}/vars -> {response.status} {response.content_type}: "
                f"{await response.text()}",
                flush=True,
            )
        client = f"example-client@{address.host}:{address.port}"
        async with http.post(
            f"{base}/{pid.id}/stop", headers={"Libprocess-From": client}
        ) as response:
            print(f"POST /{pid.id}/stop (a libprocess message) -> {response.status}", flush=True)
    print(f"wait({pid.id}) -> {await libproc.wait(pid)}", flush=True)

    # Part 2: the seed's main(): dispatch(func1); dispatch(func2, 42); wait(pid).
    pid = libproc.spawn(MyProcess("example"))
    future = libproc.dispatch(pid, MyProcess.func1)
    libproc.dispatch(pid, MyProcess.func2, 42)
    print(f"func1's future: {await future}", flush=True)
    print(f"wait({pid.id}) -> {await libproc.wait(pid)}", flush=True)

    await libproc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
