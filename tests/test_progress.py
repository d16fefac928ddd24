"""The PROGRESS line contract and the incremental scanner (pure, no I/O)."""

from __future__ import annotations

import pytest

from slave.progress import MAX_LINE, ProgressScanner, parse_progress_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("PROGRESS 42", 0.42),
        ("PROGRESS 42.5%", 0.425),
        (b"PROGRESS 7\r\n", 0.07),
        ("  PROGRESS\t100 %  ", 1.0),
        ("PROGRESS .5", 0.005),
        ("PROGRESS 0", 0.0),
        ("PROGRESS 150", 1.0),  # clamped
        ("PROGRESS -3", 0.0),  # clamped
        ("PROGRESS 1e1", 0.1),
    ],
)
def test_progress_line_formats(line: str | bytes, expected: float) -> None:
    assert parse_progress_line(line) == pytest.approx(expected)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "PROGRESS",
        "PROGRESS ",
        "PROGRESS abc",
        "PROGRESS nan",
        "PROGRESS inf",
        "PROGRESS 1e999",  # overflows to inf
        "PROGRESS 1_0",
        "PROGRESS 4 2",
        "PROGRESS 42%%",
        "progress 42",
        "xPROGRESS 42",
        "PROGRESS42",
        "step 3: PROGRESS 42",
        b"PROGRESS \xff",
    ],
)
def test_progress_line_rejects_garbage(line: str | bytes) -> None:
    assert parse_progress_line(line) is None


def test_scanner_keeps_last_progress_and_ignores_other_output() -> None:
    s = ProgressScanner()
    assert s.last is None
    assert s.feed(b"hello\nPROGRESS 10\nnoise\nPROGRESS 30\nmore\n") == pytest.approx(0.3)
    assert s.feed(b"no progress here\n") is None
    assert s.last == pytest.approx(0.3)


def test_scanner_handles_lines_split_across_chunks() -> None:
    s = ProgressScanner()
    data = b"x\nPROGRESS 12.5%\r\nPROGRESS 99\n"
    for i in range(len(data)):  # one byte at a time: every possible cut
        s.feed(data[i : i + 1])
        if data[: i + 1].endswith(b"12.5%\r\n"):
            assert s.last == pytest.approx(0.125)
    assert s.last == pytest.approx(0.99)


def test_scanner_waits_for_newline_until_flush() -> None:
    s = ProgressScanner()
    s.feed(b"PROGRESS 60")
    assert s.last is None  # "PROGRESS 6" could still become "PROGRESS 60" or "PROGRESS 600"
    assert s.flush() == pytest.approx(0.6)
    assert s.last == pytest.approx(0.6)


def test_scanner_bounds_memory_on_huge_line() -> None:
    s = ProgressScanner()
    chunk = b"y" * 1000
    for _ in range(10_000):  # 10 MB without a newline
        s.feed(chunk)
        assert len(s._partial) <= MAX_LINE
    # The rest of that long line, even if it looks like progress, is not a progress line...
    s.feed(b"PROGRESS 10\n")
    assert s.last is None
    # ...but the next line is.
    s.feed(b"PROGRESS 20\n")
    assert s.last == pytest.approx(0.2)


def test_scanner_skip_to_next_line_discards_partial_line() -> None:
    s = ProgressScanner()
    s.feed(b"PROGRESS 5")
    s.skip_to_next_line()
    s.feed(b"0\nPROGRESS 70\n")
    assert s.last == pytest.approx(0.7)
