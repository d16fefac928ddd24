"""The process whose handler is running now (a context variable shared by future and process)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The UPID of the process executing a handler in this context, or None outside any process.
current_pid: ContextVar[Any] = ContextVar("libproc_current_pid", default=None)
