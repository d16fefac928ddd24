"""State shared across libproc's modules without importing one another (no import cycles)."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

# The UPID of the process executing a handler in this context, or None outside any process.
current_pid: ContextVar[Any] = ContextVar("libproc_current_pid", default=None)

# The running Runtime (libproc.runtime) and its event loop, or None when libproc is stopped:
# set by `start()`, cleared by `stop()`.
runtime: Any = None
loop: asyncio.AbstractEventLoop | None = None
