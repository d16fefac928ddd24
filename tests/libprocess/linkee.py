"""libprocess's test-linkee, in Python: a target for remote links, in an OS process of its own.

    python tests/libprocess/linkee.py COORDINATOR_UPID

As the C++ one does, it listens on a raw socket (127.0.0.1, a free port), tells the
coordinator it is ready with a libprocess message "ready" from `linkee@127.0.0.1:<port>` (so
the coordinator learns the UPID to link to), keeps every incoming connection open forever, even
half-closed ones (so a test controls the sockets' lifetime), and exits with status 0 as soon as
any byte arrives: a message reaching it is a clear signal. It exits with status 3 when its
stdin closes, so it never outlives the test that started it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from libproc import UPID


class _Incoming(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if data:
            os._exit(0)

    def eof_received(self) -> bool:
        return True  # keep the half-open connection: never close it ourselves


def _ready_message(sender: UPID, to: UPID) -> bytes:
    return (f"POST /{to.id}/ready HTTP/1.1\r\n"
            f"User-Agent: libprocess/{sender}\r\n"
            f"Libprocess-From: {sender}\r\n"
            "Connection: Keep-Alive\r\n"
            f"Host: {to.host}:{to.port}\r\n\r\n").encode()


async def main(coordinator: UPID) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Incoming, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    me = UPID("linkee", "127.0.0.1", port)
    _, writer = await asyncio.open_connection(coordinator.host, coordinator.port)
    writer.write(_ready_message(me, coordinator))
    await writer.drain()
    stop = asyncio.Event()
    stdin = sys.stdin.fileno()
    loop.add_reader(stdin, lambda: stop.set() if not os.read(stdin, 1) else None)
    await stop.wait()
    os._exit(3)


if __name__ == "__main__":
    asyncio.run(main(UPID.parse(sys.argv[1])))
