"""A master's contender alone in an OS process, for tests that SIGSTOP or SIGKILL it.

    python tests/ha/contender_child.py ZK_URL ID SESSION_TIMEOUT

Prints one JSON object a line on stdout, each with `t` (time.monotonic(): CLOCK_MONOTONIC,
the same clock in every process of the machine, so the test can order lines against its own
events): `{"event": "change", "leading", "term", "reason"}` at every leadership change, and
`{"event": "status", "leading", "term", "member"}` every 20 ms, `leading` being what the
contender believes right then. SIGTERM withdraws and exits 0.

`ChildContender` is the test's side: it starts the script, collects its lines on a thread,
and stops it at the end (SIGKILL if need be).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from master.election import LeaderContender, Leadership  # noqa: E402
from protos.leader_info import LeaderInfo  # noqa: E402


class ChildContender:
    """The test's handle on a contender_child.py process."""

    def __init__(self, url: str, ident: int, session_timeout: float, log: Path) -> None:
        self.ident = str(ident)
        self.log = log
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        # Dies with the test process (setpriv --pdeathsig) even if its clean-up never runs.
        wrapper = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        with open(log, "ab") as err:
            self.popen = subprocess.Popen(
                [*wrapper, sys.executable, __file__, url, self.ident, str(session_timeout)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._lines.append(item)

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [x for x in self._lines if event is None or x["event"] == event]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                 what: str, after: float = 0.0) -> dict[str, Any]:
        """The first line after `after` (a monotonic time) for which predicate holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.lines():
                if item["t"] > after and predicate(item):
                    return item
            if self.popen.poll() is not None:
                raise AssertionError(f"contender {self.ident} exited ({self.popen.returncode})"
                                     f" waiting for {what}; its log: {self.log.read_text()}")
            time.sleep(0.02)
        raise AssertionError(f"contender {self.ident}: no {what} within {timeout:g} s; last "
                             f"lines: {self.lines()[-3:]}; log tail: "
                             f"{self.log.read_text()[-1500:]}")

    def signal(self, sig: int) -> float:
        """Send sig to the child; returns the monotonic time just after it was sent."""
        os.kill(self.popen.pid, sig)
        return time.monotonic()

    def close(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(15)
        self._reader.join(5)


def emit(**fields: object) -> None:
    print(json.dumps({"t": time.monotonic(), **fields}), flush=True)


async def main(url: str, ident: str, session_timeout: float) -> int:
    info = LeaderInfo(f"master@127.0.0.1:{5000 + int(ident)}",
                      f"http://127.0.0.1:{5000 + int(ident)}", id=ident)
    contender = LeaderContender(url, info, session_timeout=session_timeout)
    contender.start()

    def changed(change: Leadership) -> None:
        emit(event="change", leading=change.leading, term=change.term, reason=change.reason)

    contender.on_change(changed)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        emit(event="status", leading=contender.leading, term=contender.term,
             member=contender.member)
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass
    await contender.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
