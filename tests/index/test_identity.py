"""An image is what the model sees: metadata edits are the same image, pixel edits a new one.

Every format of the matrix, edited by exiftool (metadata) and by Pillow or a
new RAW preview (pixels), through the pipeline with real exiftool and a
counting fake model. Also: older indexes get their content keys without
the model, and our write never replaces another program's newer edit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, text

from daemon.index import records
from daemon.index.db import MIGRATIONS, Database
from daemon.index.db import Image as ImageRow
from daemon.metadata import MetadataWriter
from daemon.metadata.exiftool import stat_of
from daemon.service.pipeline import Pipeline
from daemon.testing.helpers import (
    FakeAnalyzer,
    PipelineFactory,
    copy_corpus,
    make_config,
    raw_with_preview,
    read_tags,
    set_raw_preview,
)


def repaint(path: Path) -> None:
    """A real pixel edit, saved in the file's own format (what an editor's export does)."""
    with Image.open(path) as im:
        fmt = im.format
        edited = im.convert("RGB")
    edited.paste((255, 0, 255), (0, 0, 24, 24))
    edited.save(path, format=fmt)


MATRIX: dict[str, tuple[Callable[[Path], Path], Callable[[Path], None]]] = {
    "jpeg": (lambda d: copy_corpus(["pillow/hopper.jpg"], d)[0], repaint),
    "png": (lambda d: copy_corpus(["pillow/hopper.png"], d)[0], repaint),
    "webp": (lambda d: copy_corpus(["pillow/hopper.webp"], d)[0], repaint),
    "tiff": (lambda d: copy_corpus(["pillow/hopper.tif"], d)[0], repaint),
    "heic": (lambda d: copy_corpus(["pillow/hopper.heif"], d)[0], repaint),
    "dng": (lambda d: raw_with_preview("exiftool/DNG.dng", d), lambda p: set_raw_preview(p, seed=1)),
    "nef": (lambda d: raw_with_preview("exiftool/Nikon.nef", d), lambda p: set_raw_preview(p, seed=1)),
}


def images(pipeline: Pipeline) -> int:
    with pipeline.db.transaction() as s:
        return s.scalar(select(func.count()).select_from(ImageRow)) or 0


@pytest.mark.parametrize("fmt", sorted(MATRIX))
def test_a_metadata_edit_runs_no_model_and_a_pixel_edit_does(
    fmt: str, tmp_path: Path, open_test_pipeline: PipelineFactory
) -> None:
    make, edit_pixels = MATRIX[fmt]
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path, metadata={"write": False}), model)
    path = make(tmp_path / "inbox")
    pipeline.offer([path])
    pipeline.drain()
    assert (sum(model.calls), images(pipeline)) == (1, 1)

    # Another program writes metadata into the file itself (-m: the RAW test files' minor warnings).
    subprocess.run(
        ["exiftool", "-m", "-q", "-overwrite_original", "-XMP-xmp:Rating=4", "-XMP-dc:Subject+=mine", str(path)],
        check=True,
        capture_output=True,
    )
    assert read_tags(path, "XMP-xmp:Rating")["XMP-xmp:Rating"] == 4
    assert pipeline.offer([path]) == 1  # its bytes changed
    pipeline.drain()
    assert (sum(model.calls), images(pipeline)) == (1, 1), "a metadata edit ran the model"

    edit_pixels(path)
    assert pipeline.offer([path]) == 1
    pipeline.drain()
    assert (sum(model.calls), images(pipeline)) == (2, 2), "a pixel edit was not seen as a new image"


def test_an_index_from_before_content_keys_learns_them_without_the_model(
    tmp_path: Path, open_test_pipeline: PipelineFactory
) -> None:
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path), model)
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox")
    pipeline.offer([path])
    pipeline.drain()
    with pipeline.db.transaction(write=True) as s:  # as an index made by an earlier version has it
        s.execute(text("UPDATE images SET content_key = NULL"))
    pipeline.recover()  # at start-up
    with pipeline.db.transaction() as s:
        assert s.scalar(select(ImageRow.content_key)) is not None
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-xmp:Rating=2", str(path)], check=True)
    pipeline.offer([path])
    pipeline.drain()
    assert sum(model.calls) == 1


def test_migration_0004_upgrades_an_older_index(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    with db.engine.begin() as conn:  # back to the schema before 0004
        conn.exec_driver_sql("DROP INDEX ix_images_content_key")
        conn.exec_driver_sql("ALTER TABLE images DROP COLUMN content_key")
        conn.exec_driver_sql("DROP TABLE rejections")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE name LIKE '0004%'")
        conn.exec_driver_sql("INSERT INTO images (sha256, width, height, created_at) VALUES ('ab', 2, 2, 0)")
    db.close()
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert db.schema_version() == len(MIGRATIONS) and "rejections" in db.table_names()
        with db.transaction() as s:
            assert s.execute(text("SELECT sha256, content_key FROM images")).all() == [("ab", None)]
    finally:
        db.close()


@pytest.mark.parametrize("temp_name", ["{}_exiftool_tmp", "{}.tmp", "{}~", ".{}.swp", "{}.part"])
def test_no_write_while_another_program_saves_the_file(
    temp_name: str, tmp_path: Path, open_test_pipeline: PipelineFactory
) -> None:
    pipeline = open_test_pipeline(make_config(tmp_path), FakeAnalyzer(), tag_threads=0)
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox")
    temp = path.with_name(temp_name.format(path.name))  # another program is saving it
    temp.write_bytes(b"")
    before = path.read_bytes()
    pipeline.offer([path])
    pipeline.drain()
    assert path.read_bytes() == before
    with pipeline.db.transaction() as s:
        assert records.file_by_path(s, str(path)).tag_state == "pending"
    temp.unlink()
    pipeline.recover()  # or the file's next event
    with pipeline.db.transaction() as s:
        assert records.file_by_path(s, str(path)).tag_state == "done"
    assert "bright thing" in read_tags(path)["XMP-dc:Subject"] or "dark thing" in read_tags(path)["XMP-dc:Subject"]


def test_our_write_never_replaces_a_newer_edit(tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    with MetadataWriter() as writer:
        read_at, current = stat_of(path), writer.read(path)
        # Between our read and our write, a person adds a keyword in their photo tool.
        subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject+=theirs", str(path)], check=True)
        out = writer.write(path, alt_text="a", description="d", keywords=["ours"], current=current, read_at=read_at)
    assert read_tags(path)["XMP-dc:Subject"] == ["theirs", "ours"]
    assert out.before.get("XMP-dc:Subject") == ["theirs"]  # planned again from what the file held then
