"""Changes made while the daemon was stopped: after a start-up the index holds what the disk holds.

Six photos indexed; then, with nothing running, one deleted, one moved into a subfolder, one renamed,
one's pixels replaced; then the start-up the daemon does (scan, reconcile, drain). Both backends; and
the folders that must never be taken as "everything was deleted".
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from daemon.config import Config
from daemon.index.db import File
from daemon.index.search import parse, search
from daemon.service.reconcile import last, reconcile
from daemon.service.watch import walk_candidates
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config


def _photo(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, 90, 160)).save(path)
    return path


@pytest.fixture
def indexed(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory) -> Any:
    inbox = tmp_path / "inbox"
    for i in range(6):
        _photo(inbox / f"img{i}.png", 30 * i)
    config = make_config(tmp_path, index={"database": database}, metadata={"write": False})
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(config, model)
    pipeline.offer(walk_candidates(inbox))
    pipeline.drain()
    return config, pipeline, model, inbox


def _live(pipeline: Any) -> dict[str, int | None]:
    with pipeline.db.transaction() as s:
        return dict(s.execute(select(File.path, File.image_id).where(File.state != "deleted")).all())


def _start_up(config: Config, pipeline: Any, inbox: Path) -> Any:
    """What the daemon does as it starts watching: queue what is new or changed, remove what is gone."""
    done = reconcile(pipeline.db, config, pipeline.offer)
    pipeline.drain()
    return done


def test_the_index_equals_the_disk_after_a_start_up(indexed: Any) -> None:
    config, pipeline, model, inbox = indexed
    before = _live(pipeline)
    (inbox / "img0.png").unlink()
    (inbox / "sub").mkdir()
    shutil.move(inbox / "img1.png", inbox / "sub" / "img1.png")
    os.rename(inbox / "img2.png", inbox / "renamed.png")
    _photo(inbox / "img3.png", 250)  # new pixels, same name
    calls = len(model.calls)

    done = _start_up(config, pipeline, inbox)

    on_disk = {str(p) for p in inbox.rglob("*.png")}
    assert set(_live(pipeline)) == on_disk and len(on_disk) == 5
    # Counted by stat alone: the deleted file, the moved and the renamed one, the one with new pixels.
    assert (done.removed, done.moved, done.changed, done.queued) == (1, 2, 1, 3)
    assert done.samples == {
        "removed": [str(inbox / "img0.png")],
        "moved": [str(inbox / "renamed.png"), str(inbox / "sub" / "img1.png")],
        "changed": [str(inbox / "img3.png")],
    }
    after = _live(pipeline)
    # Moved and renamed: recognised by content, the same image and its results; no model run for them.
    assert after[str(inbox / "sub" / "img1.png")] == before[str(inbox / "img1.png")]
    assert after[str(inbox / "renamed.png")] == before[str(inbox / "img2.png")]
    assert sum(model.calls[calls:]) == 1  # only the replaced pixels were described again
    assert after[str(inbox / "img3.png")] != before[str(inbox / "img3.png")]
    with pipeline.db.transaction() as s:
        found = {h.path for h in search(s, parse("", folder=str(inbox)), limit=100)}
    assert found == on_disk  # search points at nothing that is gone
    assert last(config) is not None and last(config)["moved"] == 2  # type: ignore[index]


def test_a_missing_or_empty_folder_is_not_taken_as_everything_deleted(indexed: Any) -> None:
    config, pipeline, _, inbox = indexed
    before = _live(pipeline)
    hidden = inbox.with_name("away")
    inbox.rename(hidden)  # unmounted
    done = reconcile(pipeline.db, config)
    assert done.removed == 0 and done.skipped == {str(inbox): "the folder is missing"}
    inbox.mkdir()  # an empty mount point
    done = reconcile(pipeline.db, config)
    assert done.removed == 0 and "the folder is empty while the index holds files" in done.skipped[str(inbox)]
    assert _live(pipeline) == before
    assert last(config)["skipped"] == done.skipped  # type: ignore[index]  # status shows it


def test_a_folder_that_cannot_be_listed_removes_nothing(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config, pipeline, _, inbox = indexed
    shutil.move(inbox / "img4.png", _photo(inbox / "deep" / "x.png", 7).parent / "img4.png")
    _start_up(config, pipeline, inbox)
    before = _live(pipeline)
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path).endswith("deep"):  # a share answering with an I/O error
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _photo(inbox / "new.png", 99)  # arrived while the daemon was stopped, beside the folder in error
    done = reconcile(pipeline.db, config, pipeline.offer)
    assert done.removed == 0 and done.skipped[str(inbox)].endswith("deep: Input/output error")
    assert done.queued == 1  # what could be listed is still queued
    pipeline.drain()
    assert _live(pipeline) == {**before, str(inbox / "new.png"): _live(pipeline)[str(inbox / "new.png")]}


def test_the_real_daemon_reconciles_at_start_up_and_status_says_so(tmp_path: Path, tiny_model: Path) -> None:
    """The user's trial: index photos, stop the daemon, change the folder, start it again."""
    from daemon.index.db import Database
    from daemon.testing.helpers import wait_until, write_config
    from tests.service.test_e2e import DaemonProcess, status
    from tests.service.test_query import _cli

    config = write_config(tmp_path, tiny_model)
    inbox = tmp_path / "inbox"
    for i in range(4):
        _photo(inbox / f"img{i}.png", 60 * i)
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == 4, timeout=120), daemon.log.read_text()
        assert daemon.stop() == 0
        (inbox / "img0.png").unlink()
        os.rename(inbox / "img1.png", inbox / "moved.png")
        daemon = DaemonProcess(config, tmp_path / "daemon2.log")
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["pending"] == 0 and status(db)["indexed"] == 3, timeout=120)
        assert daemon.stop() == 0
    finally:
        db.close()
    listed = _cli("--config", str(config), "search", "--folder", str(inbox), "--local").stdout.splitlines()
    assert sorted(p for p in listed if not p.startswith(" ")) == sorted(str(p) for p in inbox.glob("*.png"))
    out = _cli("--config", str(config), "status").stdout
    assert "reconciled with the disk (" in out and "1 removed, 1 moved or renamed, 0 changed" in out, out


def test_a_folder_dropped_from_the_config_is_hidden_listed_and_removed_only_when_asked(
    tmp_path: Path, database: str, open_test_pipeline: PipelineFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main
    from daemon.cli.base import index_status

    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    for i in range(2):
        _photo(kept / f"k{i}.png", 40 * i)
        _photo(dropped / f"d{i}.png", 40 * i + 20)
    both = make_config(
        tmp_path, index={"database": database}, metadata={"write": False}, watch={"folders": [str(kept), str(dropped)]}
    )
    one = make_config(tmp_path, index={"database": database}, metadata={"write": False}, watch={"folders": [str(kept)]})
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(both, model)

    def found() -> set[str]:
        with pipeline.db.transaction() as s:
            return {Path(h.path).name for h in search(s, parse("", since="1970-01-01"), limit=100)}

    _start_up(both, pipeline, kept)
    assert found() == {"k0.png", "k1.png", "d0.png", "d1.png"}
    images = _live(pipeline)
    calls = len(model.calls)

    assert _start_up(one, pipeline, kept).hidden == 2  # the config lost a folder
    assert found() == {"k0.png", "k1.png"}  # hidden from search...
    assert set(_live(pipeline)) == set(images)  # ...not removed
    assert index_status(one)["unwatched"] == [{"folder": str(dropped), "files": 2}]

    _start_up(both, pipeline, kept)  # put back: its files return, recognised by content
    assert found() == {"k0.png", "k1.png", "d0.png", "d1.png"} and _live(pipeline) == images
    assert model.calls[calls:] == [] and index_status(both)["unwatched"] == []

    _start_up(one, pipeline, kept)
    config_file = tmp_path / "one.toml"
    config_file.write_text(f"[watch]\nfolders = [{str(kept)!r}]\n[index]\ndatabase = {database!r}\n")
    assert main(["--config", str(config_file), "status"]) == 0
    assert f"no longer watched: {dropped}: 2 file(s) hidden from search" in capsys.readouterr().out
    assert main(["--config", str(config_file), "forget-unwatched"]) == 0
    assert set(_live(pipeline)) == {str(kept / "k0.png"), str(kept / "k1.png")}
    assert index_status(one)["unwatched"] == []
