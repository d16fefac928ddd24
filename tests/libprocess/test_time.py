"""libprocess's time_tests.cpp (TimeTest.*) against libproc's Clock.

C++-only cases, not ported: TimeTest.Arithmetic, TimeTest.RFC1123Output,
TimeTest.RFC3339Output and TimeTest.Output check libprocess's `Time` class (arithmetic with
`Duration`s, and its RFC 1123 / RFC 3339 stream formatting). libproc's clock gives plain float
seconds since the epoch, and Python's `datetime` does the formatting.
"""

from __future__ import annotations

import time

from libproc import Clock


# TimeTest.Now
def test_the_clock_moves_with_real_time_unless_paused() -> None:
    t1 = Clock.now()
    time.sleep(0.001)
    assert Clock.now() - t1 > 0.001

    Clock.pause()
    paused = Clock.now()
    time.sleep(0.001)
    assert Clock.now() == paused
    Clock.advance(0.001)
    assert Clock.now() == paused + 0.001
    Clock.resume()
    assert Clock.now() >= paused + 0.001
