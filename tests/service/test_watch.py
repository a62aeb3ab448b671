"""The watcher with a real watchdog observer (inotify) and the polling fallback."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.service.watch import FolderWatcher, SettleTracker, walk_candidates
from daemon.testing.helpers import CORPUS, wait_until


class Recorder:
    def __init__(self) -> None:
        self.settled: list[str] = []
        self.deleted: list[str] = []
        self.lock = threading.Lock()

    def on_settled(self, paths: list[str]) -> None:
        with self.lock:
            self.settled += paths

    def on_deleted(self, path: str) -> None:
        with self.lock:
            self.deleted.append(path)


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def watched(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Recorder, FolderWatcher]]:
    inbox = tmp_path / "inbox"
    rec = Recorder()
    w = FolderWatcher([inbox], rec.on_settled, rec.on_deleted, settle_seconds=0.3, polling=request.param)
    w.start()
    try:
        yield inbox, rec, w
    finally:
        w.stop()


def test_a_copied_file_settles_once(watched: tuple[Path, Recorder, FolderWatcher]) -> None:
    inbox, rec, _ = watched
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", inbox / "hopper.jpg")
    assert wait_until(lambda: rec.settled, timeout=10) == [str(inbox / "hopper.jpg")]
    time.sleep(1.0)
    assert rec.settled == [str(inbox / "hopper.jpg")]


def test_temp_names_are_ignored_and_the_rename_counts(watched: tuple[Path, Recorder, FolderWatcher]) -> None:
    inbox, rec, _ = watched
    part = inbox / "photo.jpg.crdownload"
    shutil.copyfile(CORPUS / "pillow/flower.jpg", part)
    (inbox / ".hidden.jpg").write_bytes(b"x")
    (inbox / "notes.txt").write_text("x")
    time.sleep(1.0)
    assert rec.settled == []
    part.rename(inbox / "photo.jpg")
    assert wait_until(lambda: rec.settled, timeout=10) == [str(inbox / "photo.jpg")]


def test_a_slow_writer_is_not_handed_on_until_it_stops(watched: tuple[Path, Recorder, FolderWatcher]) -> None:
    inbox, rec, _ = watched
    data = (CORPUS / "pillow/flower.jpg").read_bytes()
    target = inbox / "slow.jpg"
    with open(target, "wb") as f:
        for i in range(0, len(data), len(data) // 8):
            f.write(data[i : i + len(data) // 8])
            f.flush()
            time.sleep(0.2)
            assert rec.settled == []
    assert wait_until(lambda: rec.settled, timeout=10) == [str(target)]
    assert target.read_bytes() == data


def test_a_folder_moved_in_brings_its_files(watched: tuple[Path, Recorder, FolderWatcher], tmp_path: Path) -> None:
    inbox, rec, _ = watched
    outside = tmp_path / "trip"
    (outside / "day1").mkdir(parents=True)
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", outside / "a.jpg")
    shutil.copyfile(CORPUS / "pillow/flower.jpg", outside / "day1" / "b.jpg")
    os.rename(outside, inbox / "trip")
    expected = sorted([str(inbox / "trip" / "a.jpg"), str(inbox / "trip" / "day1" / "b.jpg")])
    assert wait_until(lambda: sorted(set(rec.settled)) == expected, timeout=10)


def test_deletes_and_moves_out_are_reported(watched: tuple[Path, Recorder, FolderWatcher], tmp_path: Path) -> None:
    inbox, rec, _ = watched
    a, b = inbox / "a.jpg", inbox / "b.jpg"
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", a)
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", b)
    wait_until(lambda: len(rec.settled) == 2, timeout=10)
    a.unlink()
    b.rename(tmp_path / "b.jpg")
    assert wait_until(lambda: sorted(rec.deleted) == sorted([str(a), str(b)]), timeout=10)


def test_settle_tracker_needs_two_identical_stats(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"1")
    t = SettleTracker(0.0)
    t.touch(str(p))
    assert t.due() == []  # first look records the stat
    time.sleep(0.6)
    assert t.due() == [str(p)]
    t.touch(str(p))
    t.due()
    p.write_bytes(b"12")  # grew between looks
    time.sleep(0.6)
    assert t.due() == []
    time.sleep(0.6)
    assert t.due() == [str(p)]


def test_walk_skips_hidden_folders_and_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "t.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    assert list(walk_candidates(tmp_path, follow_symlinks=True)) == [str(tmp_path / "sub" / "a.jpg")]
    assert list(walk_candidates(tmp_path)) == [str(tmp_path / "sub" / "a.jpg")]


def test_falls_back_to_polling_when_inotify_is_exhausted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    from watchdog.observers.polling import PollingObserver

    import daemon.service.watch as watch

    class NoInotify(watch.Observer):  # type: ignore[misc,valid-type]
        def schedule(self, *a: object, **k: object) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watch, "Observer", NoInotify)
    rec = Recorder()
    w = FolderWatcher([tmp_path / "in"], rec.on_settled, rec.on_deleted, settle_seconds=0.2)
    w.start()
    try:
        assert isinstance(w.observer, PollingObserver)
        assert "falling back to polling" in caplog.text and "max_user_watches" in caplog.text
        shutil.copyfile(CORPUS / "pillow/hopper.jpg", tmp_path / "in" / "h.jpg")
        assert wait_until(lambda: rec.settled, timeout=10) == [str(tmp_path / "in" / "h.jpg")]
    finally:
        w.stop()


def test_a_watched_folder_deleted_and_created_again(watched: tuple[Path, Recorder, FolderWatcher]) -> None:
    inbox, rec, _ = watched
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", inbox / "a.jpg")
    assert wait_until(lambda: rec.settled, timeout=10)
    shutil.rmtree(inbox)
    time.sleep(1.5)  # the watcher notices the folder is gone
    # The watched folder itself gone (or a share unmounted) is never "everything was deleted"; inotify
    # still reports each file rm -rf deleted, polling only the folder.
    assert str(inbox) not in rec.deleted
    inbox.mkdir()
    time.sleep(1.5)  # ... and that it is back
    shutil.copyfile(CORPUS / "pillow/flower.jpg", inbox / "b.jpg")
    assert wait_until(lambda: str(inbox / "b.jpg") in rec.settled, timeout=15), rec.settled


def test_a_watched_folder_moved_away_removes_nothing(
    watched: tuple[Path, Recorder, FolderWatcher], tmp_path: Path
) -> None:
    inbox, rec, _ = watched
    shutil.copyfile(CORPUS / "pillow/hopper.jpg", inbox / "a.jpg")
    assert wait_until(lambda: rec.settled, timeout=10)
    inbox.rename(tmp_path / "away")  # a person tidying up, or a share's mount point renamed
    time.sleep(2.0)  # the watcher notices the folder is gone
    assert str(inbox) not in rec.deleted and str(inbox / "a.jpg") not in rec.deleted
