"""The real daemon, end to end: a subprocess running `florence-watch run` with a real
watchdog observer, a real SQLite file, real exiftool and the tiny Florence-2 from disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from sqlalchemy import func, select

from daemon.config import database_url
from daemon.imaging import decode
from daemon.index import records
from daemon.index.db import Database, File, Result
from daemon.index.db import Image as ImageRow
from daemon.testing.helpers import CORPUS, REPO, read_tags, wait_until, write_config

pytestmark = pytest.mark.slow

CORPUS_FILES = [
    "pillow/hopper.jpg",
    "pillow/flower.webp",
    "pillow/hopper.png",
    "exiftool/IPTC.jpg",
    "exiftool/MWG.jpg",
    "pillow/hopper.gif",
    "pillow/hopper.heif",
    "pillow/bad/truncated_jpeg.jpg",
]


class DaemonProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(config), "run"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self, timeout: float = 120) -> None:
        assert wait_until(
            lambda: "start-up scan" in self.log.read_text() or self.proc.poll() is not None, timeout=timeout
        ), self.log.read_text()
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()


@pytest.fixture
def daemon_env(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[Path, Path, Database]]:
    config = write_config(tmp_path, tiny_model)
    (tmp_path / "inbox").mkdir()
    db = Database(database_url(str(tmp_path / "index.db")))
    yield config, tmp_path / "inbox", db
    db.close()


def status(db: Database) -> dict:
    with db.transaction() as s:
        return records.status(s)


def test_dropped_images_end_up_indexed_tagged_and_searchable(
    daemon_env: tuple[Path, Path, Database], tmp_path: Path
) -> None:
    config, inbox, db = daemon_env
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        pixels_before = {}
        for name in CORPUS_FILES:
            target = inbox / Path(name).name
            shutil.copyfile(CORPUS / name, target)  # a plain cp, as a person would
            target.chmod(0o644)
            if "bad" not in name:
                pixels_before[target] = decode(target).image.tobytes()
        (inbox / "notes.jpg").write_text("a text file with a .jpg name\n")
        expected = len(CORPUS_FILES) + 1
        assert wait_until(
            lambda: (lambda st: st["indexed"] + st["failed"] == expected and st["pending"] == 0)(status(db)),
            timeout=180,
        ), (status(db), daemon.log.read_text()[-3000:])
        st = status(db)
        assert st["indexed"] == 7 and st["failed"] == 2, st
        assert {Path(f["path"]).name: f["reason"] for f in st["failures"]} == {
            "truncated_jpeg.jpg": "corrupt or truncated image: image file is truncated (8 bytes not processed)",
            "notes.jpg": "not an image Pillow can read (looks like a text file)",
        }
        with db.transaction() as s:
            infos = {p: records.file_info(s, str(p)) for p in pixels_before}
        for path, info in infos.items():
            assert info is not None and info["state"] == "indexed"
            assert info["metadata"]["state"] == "done", info
            target = Path(info["metadata"]["target"])
            meta = read_tags(target)
            assert meta["XMP-iptcCore:AltTextAccessibility"] == info["caption"][:250]
            if path.name not in ("MWG.jpg", "IPTC.jpg"):  # these carry a person's description, which stays
                assert meta["XMP-dc:Description"] == info["description"]
            for kw in info["keywords"]:
                assert kw in meta["XMP-dc:Subject"] and kw in meta["XMP-lr:HierarchicalSubject"]
            assert decode(path).image.tobytes() == pixels_before[path]  # pixels never change
        assert read_tags(inbox / "MWG.jpg")["XMP-dc:Description"] == "WRONG-XMP-Description"
        assert (inbox / "hopper.gif.xmp").exists()
        # Our own writes came back as events and were recognised: one model run per image.
        # IPTC.jpg and MWG.jpg are one picture with different metadata: one image.
        time.sleep(2)
        with db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(ImageRow)) == 6
            assert s.scalar(select(func.count()).select_from(Result)) == 6 * 4
        assert status(db)["pending"] == 0

        hopper = infos[inbox / "hopper.jpg"]
        word = hopper["caption"].split()[0]
        search = subprocess.run(
            [sys.executable, "-m", "daemon", "--config", str(config), "search", word, "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        assert str(inbox / "hopper.jpg") in [h["path"] for h in json.loads(search.stdout)]

        # A file moved within the inbox is found under its new name, without a model run.
        (inbox / "hopper.png").rename(inbox / "renamed.png")
        assert wait_until(lambda: _state(db, inbox / "renamed.png") == "indexed", timeout=30)
        assert _state(db, inbox / "hopper.png") == "deleted"
        with db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(ImageRow)) == 6

        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 15
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    log = daemon.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert str(inbox) in log and "index.db (role all)" in log and "model: " in log
    assert not list(inbox.glob("*_exiftool_tmp")) and not list(inbox.glob("*_original"))


def _state(db: Database, path: Path) -> str | None:
    with db.transaction() as s:
        f = records.file_by_path(s, str(path))
        return f.state if f else None


def make_variants(dest: Path, n: int) -> list[Path]:
    """n distinct small JPEGs made from a corpus image (different crops and flips)."""
    base = Image.open(CORPUS / "pillow/flower.jpg").convert("RGB")
    out = []
    for i in range(n):
        im = base.crop((i * 7 % 200, i * 5 % 100, 280 + i * 7 % 200, 260 + i * 5 % 100))
        if i % 2:
            im = ImageOps.mirror(im)
        path = dest / f"v{i:03d}.jpg"
        im.save(path, quality=85)
        out.append(path)
    return out


def test_sigkill_mid_run_and_restart_indexes_every_image_exactly_once(
    daemon_env: tuple[Path, Path, Database], tmp_path: Path
) -> None:
    config, inbox, db = daemon_env
    staging = tmp_path / "staging"
    staging.mkdir()
    files = make_variants(staging, 100)
    for f in files:
        shutil.move(f, inbox / f.name)
    for round_ in range(3):
        daemon = DaemonProcess(config, tmp_path / f"daemon{round_}.log")
        daemon.wait_ready()
        done_before = status(db)["indexed"]
        wait_until(lambda before=done_before: status(db)["indexed"] > before, timeout=60, interval=0.05)
        daemon.stop(signal.SIGKILL)
        if status(db)["indexed"] == len(files):
            break
    daemon = DaemonProcess(config, tmp_path / "final.log")
    try:
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == len(files) and status(db)["pending"] == 0, timeout=400), (
            status(db)
        )
        time.sleep(1.5)
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    with db.transaction() as s:
        rows = list(s.scalars(select(File)))
        assert sorted(Path(f.path).name for f in rows) == sorted(f.name for f in files)
        assert all(f.state == "indexed" and f.tag_state == "done" for f in rows)
        assert s.scalar(select(func.count()).select_from(ImageRow)) == len(files)
        assert s.scalar(select(func.count()).select_from(Result)) == len(files) * 4
        infos = [records.file_info(s, f.path) for f in rows]
    for info in infos:
        assert read_tags(Path(info["path"]))["XMP-iptcCore:AltTextAccessibility"] == info["caption"][:250]
        decode(info["path"])  # still a valid image
    assert not list(inbox.glob("*_exiftool_tmp")) and not list(inbox.glob("*_original"))


def test_sigterm_during_a_long_batch_returns_it_to_the_queue_quickly(
    daemon_env: tuple[Path, Path, Database], tmp_path: Path, tiny_model: Path
) -> None:
    config, inbox, db = daemon_env
    slow = tmp_path / "slow.toml"
    # 3 beams and 1,024 tokens a task: one batch takes far longer than a shutdown may.
    slow.write_text(
        config.read_text()
        .replace("num_beams = 1", "num_beams = 3")
        .replace("max_new_tokens = 16", "max_new_tokens = 1024")
    )
    daemon = DaemonProcess(slow, tmp_path / "slow.log")
    try:
        daemon.wait_ready()
        for f in make_variants(tmp_path, 4):
            shutil.move(f, inbox / f.name)
        assert wait_until(lambda: _running_jobs(db) > 0, timeout=30)
        time.sleep(1.0)  # well inside the first batch
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 5
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    assert "returned to the queue unfinished" in daemon.log.read_text()
    st = status(db)
    assert st["indexed"] == 0 and st["pending"] == 4, st
    # The next run (with short generations) finishes them, each exactly once.
    daemon = DaemonProcess(config, tmp_path / "after.log")
    try:
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == 4 and status(db)["pending"] == 0, timeout=120)
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 4


def _running_jobs(db: Database) -> int:
    from daemon.index import jobs

    with db.transaction() as s:
        return jobs.counts(s).get("running", 0)
