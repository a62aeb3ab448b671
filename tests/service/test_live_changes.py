"""Whole folders deleted or moved while the daemon watches, and a watched share unmounted and remounted.

The daemon's own watching (runner.Background with a real watchdog observer) over a real pipeline and
index; the commands a person runs (rm -rf, mv, rsync --remove-source-files, umount).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from daemon.index.db import File
from daemon.service.reconcile import last
from daemon.service.runner import Background
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config, wait_until
from tests.disks import mount_tmpfs, tmpfs


def _photos(folder: Path, n: int, shade: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (24, 24), (shade + 20 * i, 80, 140)).save(p)
    return paths


class Watching:
    """A pipeline with the daemon's watcher running; :meth:`settles` drains until a condition holds."""

    def __init__(self, pipeline: Any, model: FakeAnalyzer) -> None:
        self.pipeline, self.model = pipeline, model

    def live(self) -> dict[str, int | None]:
        with self.pipeline.db.transaction() as s:
            return dict(s.execute(select(File.path, File.image_id).where(File.state != "deleted")).all())

    def settles(self, cond: Any, timeout: float = 20) -> bool:
        return bool(wait_until(lambda: (self.pipeline.drain(), cond())[1], timeout=timeout))


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def watching(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, open_test_pipeline: PipelineFactory
) -> Iterator[tuple[Watching, Path]]:
    inbox = tmp_path / "inbox"
    config = make_config(
        tmp_path, index={"database": database}, metadata={"write": False}, watch={"polling": request.param}
    )
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(config, model)
    with Background(config, threading.Event(), lambda: False).watching(pipeline.db, pipeline.offer):
        yield Watching(pipeline, model), inbox


def _under(w: Watching, folder: Path) -> set[str]:
    return {p for p in w.live() if p.startswith(str(folder) + os.sep)}


def test_a_folder_deleted_with_rm_rf_leaves_the_index(watching: tuple[Watching, Path]) -> None:
    w, inbox = watching
    _photos(inbox / "trip", 3)
    keep = _photos(inbox, 1, shade=200)
    assert w.settles(lambda: len(w.live()) == 4)
    subprocess.run(["rm", "-rf", str(inbox / "trip")], check=True)
    assert w.settles(lambda: set(w.live()) == {str(p) for p in keep})


def test_a_folder_moved_out_leaves_and_moved_back_in_keeps_its_results(
    watching: tuple[Watching, Path], tmp_path: Path
) -> None:
    w, inbox = watching
    _photos(inbox / "trip", 3)
    assert w.settles(lambda: len(w.live()) == 3)
    images = sorted(w.live().values(), key=str)
    calls = len(w.model.calls)
    subprocess.run(["mv", str(inbox / "trip"), str(tmp_path / "elsewhere")], check=True)
    assert w.settles(lambda: not w.live())
    subprocess.run(["mv", str(tmp_path / "elsewhere"), str(inbox / "back")], check=True)
    assert w.settles(lambda: len(_under(w, inbox / "back")) == 3)
    assert sorted(w.live().values(), key=str) == images  # recognised by content: the same images
    assert w.model.calls[calls:] == []  # and no model run


def test_a_folder_moved_within_follows(watching: tuple[Watching, Path]) -> None:
    w, inbox = watching
    _photos(inbox / "a", 2)
    assert w.settles(lambda: len(w.live()) == 2)
    subprocess.run(["mv", str(inbox / "a"), str(inbox / "b")], check=True)
    assert w.settles(lambda: set(w.live()) == {str(inbox / "b" / f"p{i}.png") for i in range(2)})


def test_rsync_remove_source_files_moves_files_out(watching: tuple[Watching, Path], tmp_path: Path) -> None:
    w, inbox = watching
    _photos(inbox / "card", 3)
    assert w.settles(lambda: len(w.live()) == 3)
    out = tmp_path / "archive"
    subprocess.run(["rsync", "-a", "--remove-source-files", f"{inbox / 'card'}/", f"{out}/"], check=True)
    assert (inbox / "card").is_dir() and len(list(out.iterdir())) == 3  # rsync leaves the folders
    assert w.settles(lambda: not w.live())


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Path]:
    """The watched folder is a mount point (a share, a card) the test can unmount and mount again."""
    with tmpfs(tmp_path / "inbox", "size=4m") as inbox:
        yield inbox


def test_an_unmounted_share_removes_nothing_and_its_remount_is_reconciled(
    share: Path, tmp_path: Path, database: str, open_test_pipeline: PipelineFactory
) -> None:
    config = make_config(tmp_path, index={"database": database}, metadata={"write": False})
    pipeline = open_test_pipeline(config, FakeAnalyzer())
    w = Watching(pipeline, pipeline.analyzer)
    photos = _photos(share, 3)
    saved = tmp_path / "saved"
    shutil.copytree(share, saved)
    with Background(config, threading.Event(), lambda: False).watching(pipeline.db, pipeline.offer):
        assert w.settles(lambda: len(w.live()) == 3)
        subprocess.run(["umount", str(share)], check=True)  # the share goes away: an empty mount point
        assert w.settles(lambda: (last(config) or {}).get("skipped"))
        assert "empty while the index holds files" in last(config)["skipped"][str(share)]  # type: ignore[index]
        assert set(w.live()) == {str(p) for p in photos}  # nothing removed
        mount_tmpfs(share, "size=4m")  # it comes back, one photo deleted elsewhere meanwhile
        for p in sorted(saved.iterdir())[1:]:
            shutil.copy2(p, share / p.name)
        assert w.settles(lambda: set(w.live()) == {str(p) for p in photos[1:]})
    assert last(config)["removed"] == 1  # type: ignore[index]
