"""Service naming and routing for libproc: a name service, Online/Offline notices, and sends
addressed to a service name instead of a UPID (a small service mesh, after tbuspp).

A service name has four dotted parts, `gameid.service.zone.extension` (`demo.pong.dev.1`);
a query may leave trailing parts out (`demo.pong`) or use `*` for a part. An instance is a
(name, UPID, user data) registered with the name service, a libproc process (`names`):

    python -m libproc.names --port 5055 [--secret S] [--heartbeat-timeout 5]
    libproc.spawn(NameService(secret=...))          # or embedded in any program

Every OS process that uses it runs one names client, and each process uses a Mesh:

    await libproc.start()
    names.connect("names@127.0.0.1:5055", secret=...)    # once per OS process

    class Pong(libproc.ProtobufProcess):
        def initialize(self):
            self.mesh = names.Mesh(self)
            self.mesh.register("demo.pong.dev.1", user_data="...")   # Future[Instance]
            self.mesh.watch("demo.pong", self.on_notice)             # Online/Offline notices
            self.mesh.send_stateless("demo.pong", msg)                # round robin
            self.mesh.send_stateful("demo.pong", key, msg)            # rendezvous hashing
            self.mesh.send_to("demo.pong.dev.2", msg)                 # one named instance

Failure model: the name service links each client (a dead OS process is Offline at once)
and pings it (a stopped one is Offline after `heartbeat_timeout`); clients reconnect with
backoff and register and watch again when the name service restarts. The modules:
`model` (pure: names, routing, cache), `service`, `client`, `mesh`, `cli` (the command line),
and `names.proto` with its generated `names_pb2`.

Command line (besides serving): `python -m libproc.names list QUERY --names names@H:P` prints
the matching instances; `watch QUERY` prints them, then one line per notice (`--json`).
"""

from libproc.names.cli import main
from libproc.names.client import (
    NamesClient,
    Watch,
    connect,
    default_client,
    parse_names_pid,
    watch,
)
from libproc.names.mesh import Mesh
from libproc.names.model import (
    OFFLINE,
    ONLINE,
    Directory,
    Instance,
    InvalidNameError,
    NamesError,
    NoInstanceError,
    Notice,
    RegistrationRefusedError,
    RoundRobin,
    matches,
    parse_name,
    parse_query,
    rendezvous_pick,
)
from libproc.names.service import DEFAULT_ID, NameService

__all__ = [
    "NameService", "NamesClient", "Mesh", "Watch", "connect", "default_client", "watch",
    "Instance", "Notice", "ONLINE", "OFFLINE", "Directory", "RoundRobin", "rendezvous_pick",
    "parse_name", "parse_query", "matches", "NamesError", "InvalidNameError",
    "NoInstanceError", "RegistrationRefusedError", "DEFAULT_ID", "parse_names_pid", "main",
]
