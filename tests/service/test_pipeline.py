"""The pipeline over a real SQLite file and real exiftool, with a fast fake model.

FakeAnalyzer's real twin, FlorenceAnalyzer on the tiny checkpoint, runs the
same pipeline in test_e2e.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.imaging import sha256_file
from daemon.index import jobs, records
from daemon.index.db import File, Image, Result
from daemon.index.search import search
from daemon.service.watch import walk_candidates
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, copy_corpus, make_config, read_tags


class Env:
    """A pipeline over an inbox in tmp_path, built as the daemon builds it."""

    def __init__(
        self, tmp_path: Path, open_test_pipeline: PipelineFactory, tag_threads: int | None = None, **sections: dict
    ) -> None:
        self.tmp = tmp_path
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.analyzer = FakeAnalyzer()
        self.pipeline = open_test_pipeline(make_config(tmp_path, **sections), self.analyzer, tag_threads)
        self.db = self.pipeline.db

    def run(self, *paths: Path) -> int:
        self.pipeline.offer(p for root in (paths or (self.inbox,)) for p in walk_candidates(root))
        return self.pipeline.drain()


@pytest.fixture
def env(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory) -> Env:
    """On each backend: an SQLite file, a PostgreSQL database."""
    return Env(tmp_path, open_test_pipeline, index={"database": database})


def test_images_are_indexed_tagged_and_searchable(env: Env) -> None:
    files = copy_corpus(
        ["pillow/hopper.jpg", "pillow/flower.jpg", "exiftool/Nikon.nef", "pillow/hopper.gif"], env.inbox
    )
    env.run()
    with env.db.transaction() as s:
        st = records.status(s)
        assert (st["indexed"], st["failed"], st["pending"]) == (3, 1, 0)
        assert st["failures"] == [
            {"path": str(files[2]), "reason": "RAW file without an embedded preview image large enough to describe"}
        ]
        info = records.file_info(s, str(files[0]))
    assert info is not None
    assert info["caption"].startswith("a ") and info["model"] == "fake-florence"
    got = read_tags(files[0], "XMP-iptcCore:AltTextAccessibility", "XMP-dc:Description", "XMP-dc:Subject")
    assert got["XMP-iptcCore:AltTextAccessibility"] == info["caption"]
    assert got["XMP-dc:Description"] == info["description"]
    subject = got["XMP-dc:Subject"]
    assert (subject if isinstance(subject, list) else [subject]) == info["keywords"]
    assert (env.inbox / "hopper.gif.xmp").exists()
    with env.db.transaction() as s:
        caption_word = info["caption"].split()[1]
        assert str(files[0]) in [h.path for h in search(s, caption_word)]


def test_our_own_write_is_not_processed_again(env: Env) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], env.inbox)
    env.run()
    assert env.analyzer.calls == [1]
    assert env.pipeline.offer([path]) == 0  # the tagged file matches the recorded fingerprint
    assert env.run() == 0
    assert env.analyzer.calls == [1]


def test_copies_and_moves_never_rerun_the_model(env: Env) -> None:
    [original] = copy_corpus(["pillow/flower.jpg"], env.inbox)
    untagged = env.tmp / "untagged.jpg"
    shutil.copyfile(original, untagged)
    env.run()
    # A copy of the tagged file, a move, and a copy of the untagged original.
    shutil.copyfile(original, env.inbox / "copy.jpg")
    original.rename(env.inbox / "moved.jpg")
    env.pipeline.forget(original)
    shutil.copyfile(untagged, env.inbox / "original-again.jpg")
    env.run()
    assert env.analyzer.calls == [1]
    with env.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        assert s.scalar(select(func.count()).select_from(Result)) == 4
        states = {Path(f.path).name: (f.state, f.tag_state) for f in s.scalars(select(File))}
    assert states == {
        "flower.jpg": ("deleted", "done"),
        "copy.jpg": ("indexed", "done"),
        "moved.jpg": ("indexed", "done"),
        "original-again.jpg": ("indexed", "done"),
    }
    alt = "XMP-iptcCore:AltTextAccessibility"
    values = {read_tags(env.inbox / n, alt)[alt] for n in ("copy.jpg", "moved.jpg", "original-again.jpg")}
    assert len(values) == 1  # the untagged copy was tagged from the index


def test_bad_files_fail_alone_with_reasons(env: Env, corpus: Path) -> None:
    copy_corpus(
        [
            "pillow/bad/truncated_jpeg.jpg",
            "pillow/bad/broken.png",
            "pillow/bad/decompression_bomb.gif",
            "pillow/bad/hopper_bad_exif.jpg",
            "pillow/hopper.png",
        ],
        env.inbox,
    )
    (env.inbox / "text.jpg").write_text("just some text\n")
    (env.inbox / "empty.jpg").write_bytes(b"")
    env.run()
    with env.db.transaction() as s:
        st = records.status(s)
    reasons = {Path(f["path"]).name: f["reason"] for f in st["failures"]}
    assert st["indexed"] == 2  # hopper.png and the JPEG with corrupt EXIF
    assert reasons["text.jpg"] == "not an image Pillow can read (looks like a text file)"
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["broken.png"].startswith("not an image Pillow can read")
    assert reasons["truncated_jpeg.jpg"].startswith("corrupt or truncated image")
    assert reasons["decompression_bomb.gif"].startswith("refused: image too large")


def test_a_job_interrupted_by_a_crash_is_done_exactly_once(env: Env) -> None:
    copy_corpus(["pillow/hopper.jpg", "pillow/flower.jpg"], env.inbox)
    env.pipeline.offer(walk_candidates(env.inbox))
    with env.db.transaction(write=True) as s:
        here, there = jobs.claim(s, 10)
        here.owner = f"{socket.gethostname()}:{2**22 + 12345}:1"  # a process of this host that died
        there.owner, there.lease_until = "elsewhere:1:1", time.time() - 1  # another host's, lease run out
    assert env.pipeline.drain() == 1  # any worker takes an expired claim
    env.pipeline.recover()  # at start-up: a dead process of this host needs no lease to run out
    assert env.pipeline.drain() == 1
    with env.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(File).where(File.state == "indexed")) == 2
        assert s.scalar(select(func.count()).select_from(Image)) == 2


def test_a_deleted_file_leaves_search(env: Env) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], env.inbox)
    env.run()
    path.unlink()
    env.pipeline.forget(path)
    with env.db.transaction() as s:
        assert records.file_by_path(s, str(path)).state == "deleted"
        assert search(s, "picture") == []


def test_metadata_write_off_leaves_files_untouched(tmp_path: Path, open_test_pipeline: PipelineFactory) -> None:
    e = Env(tmp_path, open_test_pipeline, metadata={"write": False})
    [path] = copy_corpus(["pillow/hopper.jpg"], e.inbox)
    before = path.read_bytes()
    e.run()
    assert path.read_bytes() == before
    with e.db.transaction() as s:
        f = records.file_by_path(s, str(path))
        assert (f.state, f.tag_state) == ("indexed", "off")


def test_crash_between_our_write_and_its_record_does_not_rerun_the_model(
    tmp_path: Path, open_test_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, open_test_pipeline, tag_threads=0)  # metadata written in this thread: the "kill" lands here
    [path] = copy_corpus(["pillow/hopper.jpg"], env.inbox)

    class Killed(BaseException):
        pass

    def die(*args: object, **kwargs: object) -> None:
        raise Killed  # the process dies after exiftool renamed the file into place

    monkeypatch.setattr(records, "record_tag", die)
    with pytest.raises(Killed):
        env.run()
    monkeypatch.undo()
    with env.db.transaction() as s:
        assert records.file_by_path(s, str(path)).tag_state == "pending"
    # Restart: recovery sees the file already holds exactly our metadata.
    env.pipeline.recover()
    assert env.pipeline.offer([path]) == 0
    assert env.pipeline.drain() == 0
    assert env.analyzer.calls == [1]
    with env.db.transaction() as s:
        f = records.file_by_path(s, str(path))
        assert f.tag_state == "done" and json.loads(f.written)["tags"]
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        # The index knows the tagged bytes, so a copy of this file is recognised too.
        assert f.sha256 == sha256_file(path)


def test_deleting_a_folder_does_not_touch_lookalike_paths(env: Env) -> None:
    (env.inbox / "a_b").mkdir()
    (env.inbox / "axb").mkdir()
    copy_corpus(["pillow/hopper.jpg"], env.inbox / "a_b")
    copy_corpus(["pillow/flower.jpg"], env.inbox / "axb")
    env.run()
    env.pipeline.forget(env.inbox / "a_b")  # "_" is a LIKE wildcard: it must match only itself
    with env.db.transaction() as s:
        assert records.file_by_path(s, str(env.inbox / "a_b" / "hopper.jpg")).state == "deleted"
        assert records.file_by_path(s, str(env.inbox / "axb" / "flower.jpg")).state == "indexed"
