"""Every test here starts and ends with no expectations, no firewall rules and a fresh Clock
(libprocess's test listener removes its filter at the end of each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libproc import Clock, firewall, testing


@pytest.fixture(autouse=True)
def _clean_libproc() -> Iterator[None]:
    testing.reset()
    firewall.install([])
    Clock.reset()
    try:
        yield
    finally:
        testing.reset()
        firewall.install([])
        Clock.reset()
