"""libproc: Apache Mesos's libprocess actor model in Python, wire-compatible with libprocess.

    import libproc

    class Echo(libproc.Process):
        def initialize(self):
            self.install("ping", lambda sender, body: self.send(sender, "pong", body))

    async def main():
        await libproc.start(host="127.0.0.1", port=0)
        pid = libproc.spawn(Echo("echo"))
        ...

Everything not listed in `__all__` may change without notice.
"""

from libproc.clock import Clock, Timer, sleep
from libproc.connections import ConnectionLimits
from libproc.delay import delay
from libproc.dispatch import defer, dispatch
from libproc.errors import (
    DeadlockError,
    FutureDiscardedError,
    FutureFailedError,
    InvalidUPIDError,
    LibprocError,
    NotRunningError,
    ProcessNotFoundError,
)
from libproc.future import Future, Promise, as_future, await_, collect
from libproc.http import add_health_check, remove_health_check
from libproc.metrics import metrics
from libproc.pid import ID, UPID
from libproc.process import Process
from libproc.protobuf import ProtobufProcess
from libproc.runtime import address, run, spawn, start, stop, terminate, wait

__all__ = [
    "UPID",
    "ID",
    "Process",
    "ProtobufProcess",
    "Future",
    "Promise",
    "as_future",
    "collect",
    "await_",
    "spawn",
    "terminate",
    "wait",
    "dispatch",
    "defer",
    "delay",
    "Clock",
    "Timer",
    "sleep",
    "start",
    "stop",
    "run",
    "address",
    "ConnectionLimits",
    "metrics",
    "add_health_check",
    "remove_health_check",
    "LibprocError",
    "NotRunningError",
    "InvalidUPIDError",
    "ProcessNotFoundError",
    "DeadlockError",
    "FutureFailedError",
    "FutureDiscardedError",
]
