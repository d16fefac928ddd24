"""Every exception libproc raises. Messages say what went wrong and what to do."""

from __future__ import annotations


class LibprocError(Exception):
    """Base class of libproc's errors."""


class NotRunningError(LibprocError):
    """libproc's runtime was used before `await libproc.start()` (or after `stop()`)."""

    def __init__(self, action: str) -> None:
        super().__init__(
            f"cannot {action}: libproc is not running; call `await libproc.start()` first "
            "(or run your program with `libproc.run(main())`)"
        )


class InvalidUPIDError(LibprocError, ValueError):
    """A string that is not `id@host:port`."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid UPID {text!r}: {reason}; expected the form id@host:port")
        self.text = text


class ProcessNotFoundError(LibprocError):
    """A dispatch or wait named a process that does not run in this OS process."""

    def __init__(self, pid: object, action: str = "dispatch") -> None:
        super().__init__(
            f"{action} to {pid} failed: no live process with that id runs here; "
            "check the UPID, or whether the process has already terminated"
        )
        self.pid = pid


class DeadlockError(LibprocError):
    """A process awaited a dispatch to itself from inside its own handler."""

    def __init__(self, pid: object) -> None:
        super().__init__(
            f"process {pid} awaited a dispatch to itself from inside its own handler: its "
            "mailbox waits for the running handler, so this would never complete; call the "
            "method directly instead, or dispatch without awaiting"
        )


class FutureError(LibprocError):
    """Base of errors raised when reading a future that holds no value."""


class FutureFailedError(FutureError):
    """The future FAILED; `str()` is its failure message."""


class FutureDiscardedError(FutureError):
    """The future was DISCARDED: its producer gave up on it."""

    def __init__(self, message: str = "the future was discarded") -> None:
        super().__init__(message)


class FutureAbandonedError(FutureDiscardedError):
    """The future is abandoned: its Promise is gone, so it will never complete."""

    def __init__(self, message: str = "the future was abandoned: nothing is left that could "
                 "complete it (its Promise was dropped)") -> None:
        super().__init__(message)


class FuturePendingError(FutureError):
    """`get()` on a future that is still PENDING."""


class WireError(LibprocError):
    """Bytes that are not a valid libprocess request; the connection is closed."""
