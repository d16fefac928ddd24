"""An attacker for the connection tests: opens many idle TCP connections from one address.

    python tests/peers/conn_flood.py HOST PORT COUNT SOURCE_IP

Raises its own RLIMIT_NOFILE soft limit as far as needed (exits 2 with a message when the
hard limit is too low), connects COUNT times from SOURCE_IP (e.g. 127.0.0.2) without
sending a byte and prints `OPEN <connected>`. On each line read from stdin it prints
`HELD <still open> REFUSED <answered or closed by the server>`. It keeps every socket open
until its stdin closes (so it never outlives its test).
"""

from __future__ import annotations

import resource
import socket
import sys

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect(), per destination


def main() -> int:
    host, port, count, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            print(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)",
                  flush=True)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
        s.settimeout(30)
        s.connect((host, port))
        socks.append(s)
    print(f"OPEN {len(socks)}", flush=True)
    while sys.stdin.readline():
        held = refused = 0
        for s in socks:
            s.setblocking(False)
            try:
                s.recv(4096, socket.MSG_PEEK)
            except BlockingIOError:
                held += 1
                continue
            except OSError:
                pass
            refused += 1
        print(f"HELD {held} REFUSED {refused}", flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
