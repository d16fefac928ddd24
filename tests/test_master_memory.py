"""Giving freed heap back after bursts (master/memory.py): only after enough tasks left
memory, at most once per interval, and for real (glibc's malloc_trim on this machine)."""

from __future__ import annotations

import ctypes.util

from master.memory import Trimmer


def test_trims_only_after_enough_tasks_left_and_not_more_often_than_the_interval() -> None:
    trimmer = Trimmer(threshold=100, interval=5.0)
    assert ctypes.util.find_library("c") is not None  # glibc here: the trim is real
    trimmer.left(99)
    assert not trimmer.maybe(100.0)  # not enough yet
    trimmer.left(1)
    assert trimmer.maybe(100.0) and trimmer.trims == 1
    trimmer.left(500)
    assert not trimmer.maybe(104.0)  # too soon
    assert trimmer.maybe(105.0) and trimmer.trims == 2
    assert not trimmer.maybe(200.0)  # nothing left memory since
