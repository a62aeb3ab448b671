"""``florence-watch index copy``: an index moves between SQLite and PostgreSQL and stays the same index.

The source is built by the real pipeline (fake model, real exiftool); it is
copied SQLite -> PostgreSQL -> SQLite, and the three must answer ``status``,
``show`` and ``search`` alike, search included (each target's triggers fill
its own search index), and keep working: a new image gets a new id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from daemon.cli import main
from daemon.config import database_url
from daemon.index import records, transfer
from daemon.index.db import Database, File, Image, Page, display_url
from daemon.index.transfer import copy_index
from daemon.service.watch import walk_candidates
from daemon.testing.helpers import PipelineFactory, copy_corpus, make_config

INDEXED = ["pillow/hopper.jpg", "pillow/flower.jpg", "pillow/hopper.gif", "pillow/exif.png", "pdf/multipage.pdf"]
BROKEN = "pillow/bad/truncated_jpeg.jpg"
QUERIES = ["picture", "bright", "dark", "label:thing", "path:hopper", "pixels -path:flower", "text OR flower"]


def cli(capsys: pytest.CaptureFixture[str], database: str, *args: str) -> Any:
    """What ``florence-watch --database DATABASE ARGS --json`` prints, parsed."""
    capsys.readouterr()
    assert main(["--database", database, *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def answers(capsys: pytest.CaptureFixture[str], database: str, files: list[Path]) -> dict[str, Any]:
    """The index as a person sees it: status, show of each file, the matches of each query."""
    status = cli(capsys, database, "status")
    status.pop("workers")  # the processes using the index now, not its contents
    status.pop("throughput")  # worked out from those processes
    shown = {str(f): cli(capsys, database, "show", str(f)) for f in files}
    # Paths and captions, not the order: the backends rank alike matches differently (bm25, ts_rank).
    found = {q: sorted((h["path"], h["caption"]) for h in cli(capsys, database, "search", q)) for q in QUERIES}
    return {"status": status, "show": shown, "search": found}


def copy(capsys: pytest.CaptureFixture[str], source: str, target: str) -> tuple[int, str, str]:
    """``florence-watch --database SOURCE index copy --to TARGET``: its status, stdout and stderr."""
    capsys.readouterr()
    rc = main(["--database", source, "index", "copy", "--to", target])
    out, err = capsys.readouterr()
    return rc, out, err


def build_source(tmp_path: Path, open_test_pipeline: PipelineFactory) -> tuple[str, list[Path]]:
    """An SQLite index: four images and a 3-page PDF, a failure (its job kept), a job waiting, two decisions."""
    inbox = tmp_path / "inbox"
    files = copy_corpus([*INDEXED, BROKEN], inbox)
    source = str(tmp_path / "source.db")
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": source}))
    pipeline.offer(walk_candidates(inbox))
    pipeline.drain()
    [waiting] = copy_corpus(["pillow/flower2.jpg"], inbox)
    assert pipeline.offer([waiting]) == 1  # queued, not processed: the jobs table has a row
    with pipeline.db.transaction(write=True) as s:
        hopper, info = records.file_by_path(s, str(files[0])), records.file_info(s, str(files[0]))
        assert hopper is not None and hopper.image_id is not None and info is not None
        records.record_decisions(s, hopper.image_id, frozenset({info["keywords"][0]}), frozenset({"description"}))
    return source, files


def test_copy_sqlite_to_postgresql_and_back(
    tmp_path: Path,
    pg_url: str,
    open_test_pipeline: PipelineFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer, "CHUNK", 3)  # every table takes several chunks, as a big index does
    source, files = build_source(tmp_path, open_test_pipeline)
    before = answers(capsys, source, files)
    assert (before["status"]["indexed"], before["status"]["failed"], before["status"]["pending"]) == (5, 1, 1)
    assert before["show"][str(files[0])]["rejected"] and before["show"][str(files[0])]["rejected_fields"]
    assert all(before["search"].values()), before["search"]  # every query finds something to compare

    rc, out, err = copy(capsys, source, pg_url)
    assert rc == 0, err
    # The PDF: its document's results (each task, and <OCR> with every page's text), and its 3 pages.
    rows = {"images": 5, "files": 6, "results": 21, "pages": 3, "documents": 5, "jobs": 2, "rejections": 2}
    assert err.splitlines() == [f"copied {table}: {n} row(s)" for table, n in rows.items()]
    assert out == f"copied 5 image(s) and 6 file(s) to {display_url(pg_url)}\n"
    assert answers(capsys, pg_url, files) == before

    back = str(tmp_path / "back.db")
    assert copy(capsys, pg_url, back)[0] == 0
    assert answers(capsys, back, files) == before

    # The PostgreSQL copy goes on: a new image, and the waiting job, get ids past the copied ones.
    new, document = copy_corpus(["pillow/hopper_gray.jpg", "pdf/text.pdf"], tmp_path / "inbox")
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": pg_url}))
    pipeline.offer([new, document])
    pipeline.drain()
    with pipeline.db.transaction() as s:
        assert records.status(s)["indexed"] == 8
        assert s.scalar(select(func.max(Image.id))) == s.scalar(select(func.count()).select_from(Image)) == 8
        added = records.file_by_path(s, str(new))
        assert added is not None and added.state == "indexed" and added.id > 6
        assert s.scalar(select(func.max(Page.id))) == s.scalar(select(func.count()).select_from(Page)) == 5
    assert str(new) in [h["path"] for h in cli(capsys, pg_url, "search", "path:hopper_gray")]


def test_copy_refuses_a_target_that_is_not_empty(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = str(tmp_path / "source.db")
    db = Database(database_url(source))
    with db.transaction(write=True) as s:
        s.add(File(path="/p/a.jpg", state="failed", error="truncated"))
    # A password in the URL: the message shows it masked (trust authentication ignores it).
    target = pg_url.replace("postgres@", "postgres:s3cret@", 1)
    try:
        assert copy(capsys, source, target)[0] == 0
        rc, out, err = copy(capsys, source, target)
        assert (rc, out) == (1, "")
        masked = display_url(target)
        assert "s3cret" not in err and "***" in masked
        assert err == (
            f"error: index database {masked}: not empty (1 files): index copy needs a new, empty database as its "
            "target\n"
        )
        target_db = Database(target)
        try:
            with pytest.raises(Exception, match="not empty"):
                copy_index(db, target_db)
            with target_db.transaction() as s:  # the refused copies added nothing
                assert s.scalar(select(func.count()).select_from(File)) == 1
        finally:
            target_db.close()
    finally:
        db.close()
