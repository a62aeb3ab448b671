"""The daemon under real copy tools, bad input, concurrent readers and load.

The real daemon (runner.Daemon: real watchdog observer, real SQLite file,
real exiftool) runs in a thread with the fast FakeAnalyzer: these tests
measure everything but the model, whose real path test_e2e covers.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.config import database_url
from daemon.index import records
from daemon.index.db import Database, File
from daemon.index.db import Image as ImageRow
from daemon.index.search import search
from daemon.testing.helpers import (
    CORPUS,
    REPO,
    PipelineFactory,
    RunningDaemon,
    make_config,
    variants,
    wait_until,
    write_png,
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = RunningDaemon(make_config(tmp_path, metadata={"write": True})).started()
    yield d
    d.stop()


def test_real_copy_tools_each_file_processed_exactly_once(running: RunningDaemon, tmp_path: Path) -> None:
    inbox, stage = running.inbox, tmp_path / "stage"
    srcs = variants(stage, 9)
    subprocess.run(["cp", str(srcs[0]), str(inbox / "cp.jpg")], check=True)
    subprocess.run(["mv", str(srcs[1]), str(inbox / "mv.jpg")], check=True)
    subprocess.run(["rsync", str(srcs[2]), str(inbox / "rsync.jpg")], check=True)  # .rsync.jpg.XXXX, then rename
    part = inbox / "download.jpg.crdownload"
    shutil.copyfile(srcs[3], part)
    time.sleep(1)
    part.rename(inbox / "download.jpg")
    (stage / "tree" / "2024" / "june").mkdir(parents=True)
    shutil.move(srcs[4], stage / "tree" / "2024" / "june" / "a.jpg")
    shutil.move(srcs[5], stage / "tree" / "2024" / "b.jpg")
    os.rename(stage / "tree", inbox / "tree")
    data = srcs[6].read_bytes()
    with open(inbox / "slow.jpg", "wb") as f:  # a slow writer: 8 chunks over ~3 s
        for i in range(8):
            f.write(data[i * len(data) // 8 : (i + 1) * len(data) // 8])
            f.flush()
            time.sleep(0.4)
    st = running.settled(7)
    assert (st["indexed"], st["failed"]) == (7, 0), st
    assert running.images_analyzed() == 7  # nothing twice, nothing while incomplete

    # An editor's atomic save over an indexed image: new content, analysed again.
    tmp = inbox / ".cp.jpg.swp"
    shutil.copyfile(srcs[7], tmp)
    os.replace(tmp, inbox / "cp.jpg")
    assert wait_until(lambda: running.images_analyzed() == 8, timeout=20)
    st = running.settled(7)
    with running.db.transaction() as s:
        f = records.file_by_path(s, str(inbox / "cp.jpg"))
        image = s.get(ImageRow, f.image_id)
        assert image.sha256 == __import__("hashlib").sha256(srcs[7].read_bytes()).hexdigest()
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 8
    time.sleep(2)
    assert running.images_analyzed() == 8  # our own metadata writes never came back as work


def test_bad_input_all_at_once(running: RunningDaemon, tmp_path: Path) -> None:
    inbox = running.inbox
    # Every image of the corpus; its PDFs are documents, not candidate images (yet).
    corpus_files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in {".md", ".pdf"})
    for p in corpus_files:
        shutil.copyfile(p, inbox / f"{p.parent.name}-{p.name}")
    (inbox / "zero.jpg").write_bytes(b"")
    (inbox / "text.jpg").write_text("hello\n")
    (inbox / "doc.jpg").write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    write_png(inbox / "bomb.png", 30_000, 30_000)  # the header of a decompression bomb
    odd = ["with space.jpg", "café 日本.jpg", "quote\"'s.jpg", "-leading-dash.jpg", "new\nline.jpg"]
    for name in odd:
        shutil.copyfile(CORPUS / "pillow/flower.jpg", inbox / name)
    (inbox / "loop").mkdir()
    (inbox / "loop" / "self").symlink_to(inbox)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(CORPUS / "pillow/hopper.png", outside / "secret.png")
    (inbox / "link-out").symlink_to(outside)
    total = len(corpus_files) + 4 + len(odd)
    st = running.settled(total, timeout=120)
    reasons = {Path(f["path"]).name: f["reason"] for f in st["failures"]}
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert reasons["text.jpg"] == "not an image Pillow can read (looks like a text file)"
    assert reasons["doc.jpg"] == "not an image Pillow can read (looks like a PDF)"
    assert reasons["bomb.png"].startswith("refused: image too large to decode safely")
    assert reasons["bad-truncated_jpeg.jpg"].startswith("corrupt or truncated image")
    assert reasons["exiftool-Nikon.nef"] == "RAW file without an embedded preview image large enough to describe"
    for name, reason in reasons.items():
        assert reason and "Traceback" not in reason, name
    with running.db.transaction() as s:
        paths = {Path(p).name for p in s.scalars(select(File.path))}
        for name in odd:
            assert records.file_by_path(s, str(inbox / name)).state == "indexed", name
        newline = records.file_by_path(s, str(inbox / "new\nline.jpg"))
        assert newline.tag_state == "failed"
        assert "line break" in newline.error
    assert "secret.png" not in paths  # the link out of the watched folder is not followed
    assert st["indexed"] + st["failed"] == total
    assert running.thread.is_alive()


def test_concurrent_readers_never_fail_a_write(running: RunningDaemon, tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0]

    def reader() -> None:
        db = Database(database_url(str(tmp_path / "index.db")))
        try:
            while not stop.is_set():
                with db.transaction() as s:
                    search(s, "picture")
                    records.status(s)
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=reader, name=f"reader{i}") for i in range(3)]
    for t in threads:
        t.start()
    try:
        for p in variants(tmp_path / "stage", 60):
            shutil.move(p, running.inbox / p.name)
        st = running.settled(60, timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert (st["indexed"], st["failed"]) == (60, 0)
    assert searches[0] > 10


def test_a_file_deleted_before_its_turn(tmp_path: Path, open_test_pipeline: PipelineFactory) -> None:
    config = make_config(tmp_path)
    pipeline = open_test_pipeline(config)
    paths = variants(config.folders[0], 3)
    pipeline.offer(paths)
    paths[1].unlink()
    pipeline.drain()
    with pipeline.db.transaction() as s:
        st = records.status(s)
        assert (st["indexed"], st["failed"], st["pending"]) == (2, 0, 0)
        assert records.file_by_path(s, str(paths[1])) is None


@pytest.mark.slow
def test_load_2000_images_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage = tmp_path / "stage"
    files = variants(stage, 2000, size=64)
    d = RunningDaemon(make_config(tmp_path, model={"batch_size": 16}))
    try:
        assert wait_until(lambda: d.inbox.exists(), timeout=10)
        time.sleep(0.5)
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        for p in files:
            os.rename(p, d.inbox / p.name)
        # Polled twice a second: status() over 2,000 rows ten times a second took CPU from the daemon.
        st = d.settled(2000, timeout=600, interval=0.5)
        seconds = time.monotonic() - started
        rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024
    finally:
        d.stop()
    assert (st["indexed"], st["failed"]) == (2000, 0)
    rate = 2000 / seconds
    with capsys.disabled():
        print(
            f"\nload: 2000 images, watch -> hash -> index -> exiftool: {seconds:.1f} s, {rate:.1f} images/s, "
            f"peak RSS grew {rss_growth_mib:.0f} MiB"
        )
    assert rss_growth_mib < 300  # the backlog lives in the database, not in memory


# Run as an unprivileged user: permission bits mean nothing to root, and CI is root.
# So the pipeline runs in a child process, not through the open_test_pipeline fixture;
# it is opened the same way, by runner.open_pipeline. The interpreter may live under
# root's home (pyenv), which the user cannot enter: everything is imported first,
# then the process gives up root.
_AS_USER_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
import exiftool, PIL.Image, PIL.ImageChops, sqlalchemy.dialects.sqlite.pysqlite
PIL.Image.init()  # every image plugin
from daemon.config import parse_config
from daemon.index import records
from daemon.service.runner import open_pipeline
from daemon.service.watch import walk_candidates
from daemon.testing.helpers import FakeAnalyzer

uid = int(sys.argv[3])
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
assert os.getuid() == uid
before = set(sys.modules)
root = sys.argv[1]
config = parse_config({"watch": {"folders": [root + "/inbox"]}, "index": {"database": root + "/db/index.db",
                       "max_attempts": 1}})
with open_pipeline(config, FakeAnalyzer()) as pipeline:
    pipeline.offer(walk_candidates(config.folders[0]))
    pipeline.drain()
    with pipeline.db.transaction() as s:
        st = records.status(s)
        st["tag_states"] = {f: (records.file_info(s, f) or {}).get("metadata", {}).get("state") for f in sys.argv[4:]}
late = sorted(set(sys.modules) - before)
print(json.dumps({**st, "imported_late": late}))
"""


def test_permissions_as_an_unprivileged_user(tmp_path: Path) -> None:
    """Unreadable file, read-only file, read-only folder: each gets a sidecar or a reason; the rest is indexed."""
    if os.getuid() == 0:
        uid = 65534  # nobody
        root = Path(tempfile.mkdtemp(prefix="fw-perm-", dir="/tmp"))  # pytest's tmp_path is root-only (0700)
    else:
        uid, root = os.getuid(), tmp_path
    try:
        os.chmod(root, 0o755)
        inbox = root / "inbox"
        for d in (inbox / "ro", root / "db"):
            d.mkdir(parents=True)
        src = CORPUS / "pillow/hopper.jpg"
        paths = {name: inbox / name for name in ("ok.jpg", "unreadable.jpg", "locked.jpg", "ro/photo.jpg")}
        for name, p in paths.items():
            shutil.copyfile(src, p)
            # Different bytes per file, so that each is its own image.
            with p.open("ab") as fh:
                fh.write(name.encode())
        if os.getuid() == 0:  # the user owns the inbox, the database folder and one file
            for p in (inbox, root / "db", paths["ok.jpg"]):
                os.chown(p, uid, -1)
        paths["unreadable.jpg"].chmod(0o000)
        paths["locked.jpg"].chmod(0o444)  # the folder is writable: a sidecar beside it
        paths["ro/photo.jpg"].chmod(0o444)
        (inbox / "ro").chmod(0o555)  # neither the file nor a sidecar can be written
        locked_before = paths["locked.jpg"].read_bytes()

        proc = subprocess.run(
            [sys.executable, "-c", _AS_USER_SCRIPT, str(root), str(REPO), str(uid), *[str(p) for p in paths.values()]],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout.strip().splitlines()[-1])
        # Nothing loaded after giving up root: a checkout the user cannot read would fail there.
        assert st["imported_late"] == []
        assert st["indexed"] == 3 and st["pending"] == 0
        assert st["failures"] == [
            {
                "path": str(paths["unreadable.jpg"]),
                "reason": "permission denied: the daemon's user cannot read this file",
            }
        ]
        assert st["metadata_failures"] == [
            {
                "path": str(paths["ro/photo.jpg"]),
                "reason": (
                    f"metadata not written: cannot write metadata: neither the file nor a sidecar in {inbox / 'ro'} "
                    "is writable"
                ),
            }
        ]
        tags = st["tag_states"]
        assert (tags[str(paths["ok.jpg"])], tags[str(paths["locked.jpg"])]) == ("done", "done")
        assert paths["locked.jpg"].read_bytes() == locked_before
        assert (inbox / "locked.jpg.xmp").exists()
        assert not (inbox / "ok.jpg.xmp").exists()  # written into the file itself
    finally:
        if (root / "inbox" / "ro").exists():
            (root / "inbox" / "ro").chmod(0o755)
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)
