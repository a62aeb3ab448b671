"""Faults around the index's server, with a real PostgreSQL server of the test's own: stopped, started, restarted.

And the same photo folder seen through two paths, as a NAS's watcher and a
desktop's worker see one share (``index.path_map``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.cli import main
from daemon.config import IndexConfig, database_url
from daemon.index import jobs, records
from daemon.index.db import Database, File, Job, Result
from daemon.index.db import Image as ImageRow
from daemon.testing.helpers import REPO, PipelineFactory, make_config, read_tags, variants, wait_until, write_toml
from daemon.testing.postgres import Cluster


@pytest.fixture
def server() -> Iterator[Cluster]:
    """A PostgreSQL server this test may stop and start."""
    cluster = Cluster().start()
    yield cluster
    cluster.remove()


def daemon(tmp_path: Path, name: str, data: dict, role: str = "all") -> subprocess.Popen[bytes]:
    cfg = write_toml(tmp_path / f"{name}.toml", data)
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.testing.fakerun", "--config", str(cfg), "--role", role, "--cost", "0.05"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def counts(url: str) -> tuple[int, int, int, int]:
    """(images, results, files indexed, files tagged)."""
    db = Database(url)
    try:
        with db.transaction() as s:
            n = lambda q: s.scalar(q) or 0  # noqa: E731
            return (
                n(select(func.count()).select_from(ImageRow)),
                n(select(func.count()).select_from(Result)),
                n(select(func.count()).select_from(File).where(File.state == "indexed")),
                n(select(func.count()).select_from(File).where(File.tag_state == "done")),
            )
    finally:
        db.close()


def test_a_malformed_url_and_a_down_server_are_one_line_without_the_password(
    server: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "postgresql+psycopg://fw:s3cret@[nowhere"
    assert main(["--database", bad, "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: index database postgresql+psycopg://fw:***@[nowhere: ") and "s3cret" not in err
    down = f"postgresql+psycopg://fw:s3cret@127.0.0.1:{server.port}/fw"
    server.stop()
    assert main(["--database", down, "status"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and "s3cret" not in err and "fw:***@127.0.0.1" in err
    assert "Connection refused" in err and "is the server running and reachable?" in err
    assert "Traceback" not in err


def test_a_role_without_privileges_is_told_what_to_grant(server: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    server.sql("CREATE ROLE weak LOGIN PASSWORD 'pw'")
    server.create_database("owned_by_postgres")  # PostgreSQL 15: only the owner may create in schema public
    url = server.url("owned_by_postgres", user="weak")
    assert main(["--database", url, "status"]) == 1
    err = capsys.readouterr().err
    assert "permission denied for schema public" in err and "GRANT CREATE ON SCHEMA public" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_the_server_down_at_start_and_restarted_mid_run(server: Cluster, tmp_path: Path) -> None:
    url = server.create_database("fw")
    inbox = tmp_path / "inbox"
    config = {
        "watch": {"folders": [str(inbox)], "settle_seconds": 0.3},
        "index": {"database": url, "lease_seconds": 3},
        "model": {"batch_size": 2},
        "search": {"semantic": False},
    }
    server.stop()
    proc = daemon(tmp_path, "d", config)
    log = tmp_path / "d.log"
    assert wait_until(lambda: "trying again" in log.read_text(), timeout=60), log.read_text()
    server.restart()  # the daemon was waiting: it starts once the server is back
    assert wait_until(lambda: "start-up scan" in log.read_text(), timeout=60), log.read_text()
    for p in variants(tmp_path / "stage", 40, size=40):
        shutil.move(p, inbox / p.name)
    assert wait_until(lambda: counts(url)[2] >= 10, timeout=60), log.read_text()
    server.restart(down_s=4)  # mid-run, down long enough for the daemon to find it gone
    assert wait_until(lambda: counts(url) == (40, 160, 40, 40), timeout=120), (counts(url), log.read_text()[-3000:])
    assert proc.poll() is None, log.read_text()
    assert "waiting for the index to come back" in log.read_text()
    assert stop(proc) == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_watcher_and_a_worker_see_one_folder_through_two_paths(pg_url: str, tmp_path: Path) -> None:
    """The NAS's watcher queues /volume1/photos/...; the desktop's worker reads and tags them at its mount."""
    url = database_url(pg_url)
    photos = tmp_path / "volume1" / "photos"  # where the NAS's watcher sees the share
    photos.mkdir(parents=True)
    base = {"index": {"database": url, "lease_seconds": 3}, "model": {"batch_size": 4}, "search": {"semantic": False}}
    watcher = daemon(tmp_path, "nas", {**base, "watch": {"folders": [str(photos)], "settle_seconds": 0.3}}, "watch")
    for p in variants(tmp_path / "stage", 6, size=40):
        shutil.move(p, photos / p.name)
    assert wait_until(lambda: jobs_queued(url) == 6, timeout=60), (tmp_path / "nas.log").read_text()
    assert stop(watcher) == 0
    # On the desktop the share is mounted elsewhere, and the NAS's path does not exist there.
    mount = tmp_path / "desktop" / "mnt"
    mount.parent.mkdir()
    photos.rename(tmp_path / "share")
    mount.symlink_to(tmp_path / "share", target_is_directory=True)
    mapped = {**base["index"], "path_map": {str(photos): str(mount)}}
    worker = daemon(tmp_path, "desktop", {**base, "index": mapped, "watch": {"folders": [str(mount)]}}, "work")
    try:
        assert wait_until(lambda: counts(url)[3] == 6, timeout=90), (tmp_path / "desktop.log").read_text()[-3000:]
    finally:
        assert stop(worker) == 0
    db = Database(url)
    try:
        with db.transaction() as s:
            rows = s.execute(select(File.path, File.metadata_target)).all()
            st = records.status(s)
    finally:
        db.close()
    assert st["indexed"] == 6 and st["pending"] == 0
    assert all(p.startswith(str(photos) + "/") and t == p for p, t in rows), rows  # the watcher's form
    for path, _ in rows:
        local = str(mount) + path[len(str(photos)) :]
        assert read_tags(local, "XMP-dc:Subject")["XMP-dc:Subject"]  # tagged through the worker's mount


def jobs_queued(url: str) -> int:
    db = Database(url)
    try:
        with db.transaction() as s:
            return s.scalar(select(func.count()).select_from(Job)) or 0
    finally:
        db.close()


@pytest.mark.parametrize("mounted_as_empty_folder", [False, True])
def test_a_worker_gives_back_what_it_cannot_see_and_never_drops_it(
    tmp_path: Path, open_test_pipeline: PipelineFactory, mounted_as_empty_folder: bool
) -> None:
    """A share not mounted on this worker: its jobs go back to the queue with the reason, for later."""
    mount = tmp_path / "mnt" / "photos"
    if mounted_as_empty_folder:  # the mount point exists, empty: as when the share is not mounted
        mount.mkdir(parents=True)
    config = make_config(tmp_path, index={"path_map": {"/volume1/photos": str(mount)}})
    pipeline = open_test_pipeline(config, role="work")
    with pipeline.db.transaction(write=True) as s:
        jobs.enqueue(s, ["/volume1/photos/top.jpg", "/volume1/photos/2024/sub.jpg"])
    assert pipeline.drain() == 2
    with pipeline.db.transaction() as s:
        queued = {j.path: j for j in s.scalars(select(Job))}
        assert records.file_by_path(s, "/volume1/photos/top.jpg") is None  # not marked deleted
    assert set(queued) == {"/volume1/photos/top.jpg", "/volume1/photos/2024/sub.jpg"}
    for job in queued.values():
        assert job.state == "pending" and job.not_before > time.time() + 30  # retried later, not now
        assert job.error == f"not visible on this host as {mount}{job.path[len('/volume1/photos') :]} " + (
            "(is the share mounted? see index.path_map)"
        )


def test_path_map_longest_prefix_wins_both_ways() -> None:
    cfg = IndexConfig(database="", path_map={"/volume1": "/mnt/v", "/volume1/photos": "/mnt/photos"})
    assert cfg.local("/volume1/photos/a.jpg") == "/mnt/photos/a.jpg"
    assert cfg.local("/volume1/music/a.jpg") == "/mnt/v/music/a.jpg"
    assert cfg.local("/volume1/photosX/a.jpg") == "/mnt/v/photosX/a.jpg"  # a prefix of a name is not a folder
    assert cfg.local("/elsewhere/a.jpg") == "/elsewhere/a.jpg"
    assert cfg.indexed("/mnt/photos/a.jpg") == "/volume1/photos/a.jpg"
