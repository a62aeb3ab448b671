"""A full or read-only disk under the photos during a metadata write, on a real small tmpfs.

The photo is byte-identical to before (exiftool writes a copy and renames it; no copy is left),
the daemon logs one line naming the file and the reason, keeps the write pending, and writes it
by itself when space returns or the share is writable again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.config import database_url
from daemon.index.db import Database, File
from daemon.testing.helpers import CORPUS, REPO, FakeAnalyzer, PipelineFactory, make_config, write_config
from tests.disks import fill, mount_tmpfs, tmpfs

PHOTO = CORPUS / "pillow/hopper.jpg"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The watched folder on a 1 MiB tmpfs the test can fill and remount."""
    with tmpfs(tmp_path / "inbox", "size=1m,mode=1777") as inbox:
        yield inbox


def _tag_state(pipeline: object, path: Path) -> str:
    with pipeline.db.transaction() as s:  # type: ignore[attr-defined]
        return str(s.scalar(select(File.tag_state).where(File.path == str(path))))


def test_a_full_disk_leaves_the_photo_as_it_was_and_the_write_waits_for_space(
    small_disk: Path,
    tmp_path: Path,
    database: str,
    open_test_pipeline: PipelineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photo = small_disk / "hopper.jpg"
    shutil.copyfile(PHOTO, photo)
    before = _sha(photo)
    filler = fill(small_disk)
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}), FakeAnalyzer(), tag_threads=0)
    with caplog.at_level(logging.INFO):
        pipeline.offer([photo])
        pipeline.drain()
        assert pipeline.tagger is not None
        pipeline.tagger.recover()  # the retry an idle daemon makes: still no room
    assert _sha(photo) == before and sorted(os.listdir(small_disk)) == [".filler", "hopper.jpg"]  # no copy left
    assert _tag_state(pipeline, photo) == "pending"  # the write is kept, not failed
    waits = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
    assert len(waits) == 1 and waits[0].startswith(f"{photo}: metadata write waits until it can be made: no space")
    filler.unlink()  # space returns
    pipeline.tagger.recover()
    assert _tag_state(pipeline, photo) == "done" and _sha(photo) != before
    out = subprocess.run(["exiftool", "-s3", "-XMP-dc:Description", str(photo)], capture_output=True, text=True)
    assert out.stdout.strip()  # our description is in the photo now


def test_a_read_only_remount_waits_and_writes_when_writable_again(
    small_disk: Path,
    tmp_path: Path,
    database: str,
    open_test_pipeline: PipelineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photo = small_disk / "hopper.jpg"
    shutil.copyfile(PHOTO, photo)
    before = _sha(photo)
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}), FakeAnalyzer(), tag_threads=0)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with caplog.at_level(logging.WARNING):
        pipeline.offer([photo])
        pipeline.drain()
    assert _sha(photo) == before and os.listdir(small_disk) == ["hopper.jpg"]
    assert _tag_state(pipeline, photo) == "pending"
    assert f"{photo}: metadata write waits until it can be made: its filesystem is read-only" in caplog.text
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert pipeline.tagger is not None
    pipeline.tagger.recover()
    assert _tag_state(pipeline, photo) == "done" and _sha(photo) != before


# The interpreter may live under root's home (pyenv), which nobody cannot enter: the child first
# scans a photo of its own as root (so every module a scan needs is loaded), then gives up root.
_SCAN_AS_NOBODY = """
import contextlib, io, logging, os, sys
sys.path.insert(0, sys.argv[1])
from daemon.cli import main
with contextlib.redirect_stderr(io.StringIO()):
    main(["--config", sys.argv[2], "scan", sys.argv[3]])
logging.root.handlers.clear()  # the warm-up's log went to the StringIO
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(main(["--config", sys.argv[4], "scan", sys.argv[5]]))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a tmpfs, then gives up root for nobody")
@pytest.mark.parametrize("trouble", ["full", "read-only"])
def test_as_an_unprivileged_user_the_write_waits_and_the_next_run_makes_it(tiny_model: Path, trouble: str) -> None:
    """``florence-watch scan`` run by nobody: the same, with no root privileges to lean on."""
    root = Path(tempfile.mkdtemp(prefix="fw-full-", dir="/tmp"))
    try:
        root.chmod(0o755)
        os.chown(root, 65534, 65534)
        inbox = root / "inbox"
        inbox.mkdir()
        mount_tmpfs(inbox, "size=1m,mode=1777")
        photo = inbox / "hopper.jpg"
        shutil.copyfile(PHOTO, photo)
        os.chown(photo, 65534, 65534)
        before = _sha(photo)
        filler = fill(inbox) if trouble == "full" else inbox / ".filler"
        model = Path(shutil.copytree(tiny_model, root / "model"))  # pytest's tmp_path is root's alone
        for p in [model, *model.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        config = write_config(root, model)
        warm = root / "warm"
        (warm / "inbox").mkdir(parents=True)
        shutil.copyfile(PHOTO, warm / "inbox" / "w.jpg")
        warm_config = write_config(warm, model)
        env = {**os.environ, "XDG_STATE_HOME": str(root / "state"), "XDG_CACHE_HOME": str(root / "cache")}

        def scan() -> subprocess.CompletedProcess[str]:
            argv = [
                sys.executable,
                "-c",
                _SCAN_AS_NOBODY,
                str(REPO),
                str(warm_config),
                str(warm / "inbox"),
                str(config),
            ]
            return subprocess.run([*argv, str(photo)], capture_output=True, text=True, env=env, cwd=root, timeout=300)

        if trouble == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(inbox)], check=True)
        first = scan()
        why = "no space" if trouble == "full" else "its filesystem is read-only"
        assert first.stderr.count(f"metadata write waits until it can be made: {why}") == 1, first.stderr
        assert _sha(photo) == before and not [p for p in os.listdir(inbox) if p not in (".filler", "hopper.jpg")]
        db = Database(database_url(str(root / "index.db")))
        try:
            with db.transaction() as s:
                assert s.scalar(select(File.tag_state).where(File.path == str(photo))) == "pending"
            if trouble == "full":
                filler.unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(inbox)], check=True)
            second = scan()  # the next run writes what waited
            with db.transaction() as s:
                assert s.scalar(select(File.tag_state).where(File.path == str(photo))) == "done", second.stderr
        finally:
            db.close()
        assert _sha(photo) != before and photo.stat().st_uid == 65534
    finally:
        subprocess.run(["umount", "-l", str(root / "inbox")], check=False)
        shutil.rmtree(root, ignore_errors=True)
