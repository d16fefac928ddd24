"""The garbage collector's pure queue and its file work, on real files."""

from __future__ import annotations

import os
from pathlib import Path

from slave.gc import format_duration
from slave.gc_files import move_to_trash, remove_trees, scan_sandboxes, usage_of
from slave.gc_queue import GcQueue
from slave.tombstones import Tombstones


def never(name: str) -> bool:
    return False


def test_queue_gives_due_sandboxes_oldest_first_and_stops_at_the_first_not_due() -> None:
    q = GcQueue()
    for name, at in (("c@1", 30.0), ("a@1", 10.0), ("b@1", 20.0)):
        q.push(name, at)
    assert q.oldest() == 10.0
    assert q.take(due_by=25.0, everything=False, limit=10, skip=never) == [
        ("a@1", 10.0), ("b@1", 20.0)]
    assert len(q) == 1 and "c@1" in q
    assert q.take(due_by=25.0, everything=False, limit=10, skip=never) == []
    assert q.take(due_by=25.0, everything=True, limit=10, skip=never) == [("c@1", 30.0)]
    assert len(q) == 0 and q.oldest() is None


def test_queue_counts_a_sandboxs_last_end_only() -> None:
    q = GcQueue()
    q.push("a@1", 10.0)
    q.push("b@1", 15.0)
    q.push("a@1", 40.0)  # re-run: ended again
    assert len(q) == 2
    assert q.take(due_by=20.0, everything=False, limit=10, skip=never) == [("b@1", 15.0)]
    assert q.take(due_by=39.0, everything=False, limit=10, skip=never) == []
    assert q.take(due_by=40.0, everything=False, limit=10, skip=never) == [("a@1", 40.0)]


def test_queue_drops_sandboxes_in_use_and_honours_the_limit() -> None:
    q = GcQueue()
    for i in range(10):
        q.push(f"t{i}@1", float(i))
    got = q.take(due_by=100.0, everything=False, limit=3, skip=lambda n: n == "t1@1")
    assert got == [("t0@1", 0.0), ("t2@1", 2.0), ("t3@1", 3.0)]
    assert "t1@1" not in q  # in use: its next end queues it again
    assert len(q) == 6


def test_queue_work_per_take_is_bounded_by_stale_entries_too() -> None:
    q = GcQueue()
    for i in range(100):
        q.push("same@1", float(i))  # 99 stale heap entries, one live
    assert q.take(due_by=1000.0, everything=False, limit=2, skip=never) == []  # 8 pops
    assert len(q) == 1
    assert q.oldest() == 99.0
    assert q.take(due_by=1000.0, everything=False, limit=2, skip=never) == [("same@1", 99.0)]


def test_queue_from_disk_takes_ends_pushed_while_the_disk_was_read() -> None:
    pushed = GcQueue()
    pushed.push("a@1", 50.0)
    q = GcQueue.of([(1.0, "a@1"), (3.0, "c@1"), (2.0, "b@1")])
    assert len(q) == 3 and q.oldest() == 1.0
    q.merge(pushed)
    assert len(q) == 3
    assert q.take(due_by=100.0, everything=False, limit=10, skip=never) == [
        ("b@1", 2.0), ("c@1", 3.0), ("a@1", 50.0)]


def test_usage_is_the_fuller_of_blocks_and_inodes() -> None:
    #                     bsize frsize blocks bfree bavail files ffree favail flag namemax
    st = os.statvfs_result((4096, 4096, 1000, 250, 200, 100, 80, 80, 0, 255))
    u = usage_of(st)
    assert (u.blocks, u.inodes, u.fraction) == (0.75, 0.2, 0.75)
    st = os.statvfs_result((4096, 4096, 1000, 900, 900, 100, 5, 5, 0, 255))
    assert usage_of(st).fraction == 0.95
    assert usage_of(os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))).fraction == 0.0


def test_remove_trees_frees_what_it_deletes_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k" * 10000)
    box = tmp_path / "box"
    (box / "deep" / "er").mkdir(parents=True)
    (box / "stdout").write_bytes(b"x" * 100_000)
    (box / "deep" / "er" / "f").write_bytes(b"y" * 50_000)
    (box / "hard").write_bytes(b"z" * 40_000)
    os.link(box / "hard", outside / "hardlink")  # still linked from outside: frees nothing
    (box / "link").symlink_to(outside)
    (box / "locked").mkdir()
    (box / "locked" / "g").write_bytes(b"w" * 10)
    os.chmod(box / "locked", 0)
    lone_link = tmp_path / "lone"
    lone_link.symlink_to(outside)
    freed, failed, errors = remove_trees([str(box), str(lone_link), str(tmp_path / "absent")])
    assert (failed, errors) == (0, [])
    assert not box.exists() and not os.path.lexists(lone_link)
    assert (outside / "keep").read_bytes() == b"k" * 10000
    assert (outside / "hardlink").stat().st_size == 40_000
    assert 150_000 <= freed < 300_000  # stdout and f, not the hard-linked file


def test_scan_lists_sandbox_directories_with_their_mtimes(tmp_path: Path) -> None:
    boxes = tmp_path / "sandboxes"
    for name, mtime in (("b@1", 200), ("a@2", 100), ("legacy", 50)):
        (boxes / name).mkdir(parents=True)
        os.utime(boxes / name, (mtime, mtime))
    (boxes / "c@1").symlink_to(tmp_path)  # a link is no sandbox
    (boxes / "d@1").write_text("a file")
    assert sorted(scan_sandboxes(str(boxes))) == [(100.0, "a@2"), (200.0, "b@1")]
    assert scan_sandboxes(str(tmp_path / "none")) == []


def test_move_to_trash_makes_the_trash_once_and_tells_a_missing_source(tmp_path: Path) -> None:
    (tmp_path / "sandboxes" / "a@1").mkdir(parents=True)
    trash = str(tmp_path / "gc-trash")
    dst = move_to_trash(str(tmp_path / "sandboxes" / "a@1"), trash, "r.1")
    assert dst == os.path.join(trash, "r.1-a@1") and os.path.isdir(dst)
    assert move_to_trash(str(tmp_path / "sandboxes" / "a@1"), trash, "r.2") is None


def test_tombstones_survive_in_their_file_and_stay_bounded(tmp_path: Path) -> None:
    t = Tombstones(str(tmp_path), limit=3)
    t.add([("a@1", 1.0, "delay"), ("b@1", 2.0, "disk")])
    t.add([("c@1", 3.0, "delay"), ("d@1", 4.0, "delay")])
    assert t.get("a@1") is None and t.get("b@1") == (2.0, "disk") and len(t) == 3
    with open(t.path, "ab") as f:
        f.write(b"garbled line\n\xff\xfe 1 delay\ne@1 notanumber disk\ntorn@1 5.0 de")
    again = Tombstones(str(tmp_path), limit=3)
    again.add([("new@1", 9.0, "disk")])  # recorded before the file was read
    again.load(again.read())
    assert [n for n, _, _ in again.snapshot()] == ["c@1", "d@1", "new@1"]
    again.forget("c@1")
    assert again.get("c@1") is None
    assert not again.wants_compaction()
    again.add([(f"x{i}@1", 10.0 + i, "delay") for i in range(3)])
    assert again.wants_compaction()  # 8 lines > 2 x 3
    again.compact(again.snapshot())
    assert Path(again.path).read_text().count("\n") == 3


def test_durations_read_as_they_are_written() -> None:
    assert [format_duration(s) for s in (86400, 172800, 5400, 7200, 90, 2.5, 0)] == [
        "1d", "2d", "90m", "2h", "90s", "2.5s", "0s"]
