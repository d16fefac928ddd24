"""libproc: Apache Mesos's libprocess actor model in Python, wire-compatible with libprocess.

    import libproc

    class Echo(libproc.Process):
        def initialize(self):
            self.install("ping", lambda sender, body: self.send(sender, "pong", body))

    async def main():
        await libproc.start(host="127.0.0.1", port=0)
        pid = libproc.spawn(Echo("echo"))
        ...

Everything not listed in `__all__` may change without notice. Test hooks live in
`libproc.testing`, HTTP firewall rules in `libproc.firewall`.
"""

from libproc.after import after
from libproc.async_ import async_
from libproc.clock import Clock, Timer, sleep
from libproc.combinators import await_, collect, select, undiscardable
from libproc.connections import ConnectionLimits
from libproc.defer import Deferred, Placeholder, _1, _2, _3, _4, _5, _6, _7, _8, _9, defer
from libproc.delay import delay
from libproc.dispatch import dispatch
from libproc.errors import (
    DeadlockError,
    FutureAbandonedError,
    FutureDiscardedError,
    FutureFailedError,
    InvalidUPIDError,
    LibprocError,
    NotRunningError,
    ProcessNotFoundError,
)
from libproc.executor import Executor
from libproc.future import Future, Promise, as_future
from libproc.http import add_health_check, remove_health_check
from libproc.loop import Break, Continue, ControlFlow, loop
from libproc.metrics import metrics
from libproc.pid import ID, UPID
from libproc.process import Process
from libproc.protobuf import ProtobufProcess
from libproc.runtime import (
    NO_SENDER,
    address,
    post,
    run,
    spawn,
    start,
    stop,
    terminate,
    wait,
)

__all__ = [
    "UPID",
    "ID",
    "NO_SENDER",
    "Process",
    "ProtobufProcess",
    "Future",
    "Promise",
    "as_future",
    "collect",
    "await_",
    "select",
    "undiscardable",
    "after",
    "loop",
    "ControlFlow",
    "Continue",
    "Break",
    "async_",
    "Executor",
    "spawn",
    "terminate",
    "wait",
    "post",
    "dispatch",
    "defer",
    "Deferred",
    "Placeholder",
    "_1",
    "_2",
    "_3",
    "_4",
    "_5",
    "_6",
    "_7",
    "_8",
    "_9",
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
    "FutureAbandonedError",
]
