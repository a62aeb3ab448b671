"""PDFs in the watched folders: every page drawn, described and searchable, bad ones named and skipped.

Real PDFs nobody here made (``corpus/pdf``, from pypdfium2's test suite)
and scanner-like image-only PDFs that Pillow writes at 300 dpi, through
the pipeline the daemon runs, on both backends. The FakeAnalyzer reads a
page's tint as its word, so every page of a scan has a word of its own;
the tiny Florence-2 from disk is its real twin below.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from daemon import pdf
from daemon.config import ModelConfig
from daemon.index import records
from daemon.index.search import search
from daemon.model.analyze import FlorenceAnalyzer
from daemon.testing.documents import write_scan
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config, wait_until


def _inbox(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return inbox


def _info(pipeline: object, path: Path) -> dict:
    with pipeline.db.transaction() as s:  # type: ignore[attr-defined]
        info = records.file_info(s, str(path))
    assert info is not None, path
    return info


def test_real_pdfs_are_indexed_page_by_page_and_a_locked_one_is_named(
    tmp_path: Path, corpus: Path, database: str, open_test_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = _inbox(tmp_path)
    for pdf_file in (corpus / "pdf").iterdir():
        shutil.copyfile(pdf_file, inbox / pdf_file.name)
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}, metadata={"write": False}), model)
    assert pipeline.offer(sorted(inbox.iterdir())) == 5
    with caplog.at_level(logging.WARNING):
        pipeline.drain()
    multipage = _info(pipeline, inbox / "multipage.pdf")
    assert multipage["state"] == "indexed" and multipage["format"] == "PDF"
    # Pages of three sizes (A4, half of it, a quarter), each drawn at 200 dpi: their own sizes.
    assert [(p["page"], p["width"], p["height"]) for p in multipage["pages"]] == [
        (1, 1654, 2339),
        (2, 1654, 1166),
        (3, 827, 1166),
    ]
    assert (multipage["width"], multipage["height"]) == (1654, 2339)
    assert [len(_info(pipeline, inbox / n)["pages"]) for n in ("text.pdf", "render.pdf", "empty.pdf")] == [2, 1, 1]
    locked = _info(pipeline, inbox / "encrypted.pdf")
    assert locked["state"] == "failed" and "password-protected" in locked["error"]
    lines = [r.getMessage() for r in caplog.records if "encrypted.pdf" in r.getMessage()]
    assert len(lines) == 1 and "cannot be read without its password" in lines[0]


def test_a_scan_is_found_by_any_page_and_the_hit_names_the_page(
    tmp_path: Path, database: str, open_test_pipeline: PipelineFactory
) -> None:
    inbox = _inbox(tmp_path)
    scan = write_scan(inbox / "statement.pdf", pages=3)
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}, metadata={"write": False}), model)
    pipeline.offer([scan])
    pipeline.drain()
    info = _info(pipeline, scan)
    words = [p["ocr"].split()[0] for p in info["pages"]]
    assert len(set(words)) == 3, words  # every page read its own word
    assert all(w in info["ocr"] for w in words)  # the document's text is every page's
    assert model.tile_calls, "a 300-dpi page with text is read again in tiles"
    with pipeline.db.transaction() as s:
        for number, word in enumerate(words, 1):
            hits = search(s, f"text:{word}")
            assert [(h.path, h.page) for h in hits] == [(str(scan), number)]
        assert [h.page for h in search(s, "statement")] == [None]  # by its name: no page to name


def test_a_resaved_pdf_is_not_described_again_and_a_changed_page_is(
    tmp_path: Path, open_test_pipeline: PipelineFactory
) -> None:
    inbox = _inbox(tmp_path)
    scan = write_scan(inbox / "letter.pdf", pages=3)
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path, metadata={"write": False}), model)
    pipeline.offer([scan])
    pipeline.drain()
    assert sum(model.calls) == 3
    before = _info(pipeline, scan)
    # Re-saved by another program: other bytes, the same pages.
    doc = pdfium.PdfDocument(scan)
    resaved = inbox / "letter-copy.pdf"
    doc.save(resaved)
    doc.close()
    assert resaved.read_bytes() != scan.read_bytes()
    pipeline.offer([resaved])
    pipeline.drain()
    assert sum(model.calls) == 3  # no model run
    assert _info(pipeline, resaved)["sha256"] == before["sha256"]  # the same image in the index
    # Page 2 rescanned darker: only that page goes through the model again.
    write_scan(scan, pages=3, tints=[210, 90, 130])  # pages 1 and 3 as write_scan tints them
    pipeline.offer([scan])
    pipeline.drain()
    assert sum(model.calls) == 4
    after = _info(pipeline, scan)
    assert [p["ocr"] for p in after["pages"]][0::2] == [p["ocr"] for p in before["pages"]][0::2]
    assert after["pages"][1]["ocr"] != before["pages"][1]["ocr"]


def _blank_pdf(path: Path, pages: int, size: tuple[float, float] = (595, 842)) -> Path:
    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(*size)
    doc.save(path)
    doc.close()
    return path


def test_bad_pdfs_each_get_one_line_and_nothing_else_stops(
    tmp_path: Path, corpus: Path, open_test_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = _inbox(tmp_path)
    good = write_scan(inbox / "good.pdf", pages=1)
    whole = (corpus / "pdf" / "text.pdf").read_bytes()
    (inbox / "arriving.pdf").write_bytes(whole[: len(whole) // 2])  # the scanner is still writing it
    (inbox / "damaged.pdf").write_bytes(whole[:200] + b"\x00" * 5000 + b"\n%%EOF\n")
    shutil.copyfile(corpus / "pdf" / "encrypted.pdf", inbox / "locked.pdf")
    _blank_pdf(inbox / "thousands.pdf", 2000)  # a PDF bomb: thousands of pages
    _blank_pdf(inbox / "huge.pdf", 1, (14400, 14400))  # 200 by 200 inches: PDF's largest page
    (inbox / "empty.pdf").write_bytes(b"")
    config = make_config(tmp_path, metadata={"write": False}, pdf={"max_pages": 5})
    pipeline = open_test_pipeline(config, FakeAnalyzer())
    pipeline.offer(sorted(inbox.iterdir()))
    with caplog.at_level(logging.INFO):
        pipeline.drain()
    reasons = {
        "arriving.pdf": "incomplete (no %%EOF at its end): still being written",
        "damaged.pdf": "damaged PDF: PDFium cannot read it",
        "locked.pdf": "password-protected",
        "empty.pdf": "empty file (0 bytes)",
    }
    for name, reason in reasons.items():
        info = _info(pipeline, inbox / name)
        assert info["state"] == "failed" and reason in info["error"], (name, info["error"])
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING and name in r.getMessage()]
        assert len(lines) == 1 and reason in lines[0].getMessage(), (name, [r.getMessage() for r in lines])
    assert _info(pipeline, good)["state"] == "indexed"
    bomb = _info(pipeline, inbox / "thousands.pdf")
    assert bomb["state"] == "indexed" and len(bomb["pages"]) == 5
    assert any("only the first 5 of its 2000 pages" in r.getMessage() for r in caplog.records)
    huge = _info(pipeline, inbox / "huge.pdf")["pages"][0]
    assert huge["width"] * huge["height"] <= pdf.MAX_PAGE_PIXELS and huge["width"] > 6000
    (inbox / "arriving.pdf").write_bytes(whole)  # the scanner is done: the change brings it back
    assert pipeline.offer([inbox / "arriving.pdf"]) == 1
    pipeline.drain()
    assert len(_info(pipeline, inbox / "arriving.pdf")["pages"]) == 2


def test_the_tiny_florence2_describes_every_page(
    tmp_path: Path, corpus: Path, tiny_model: Path, open_test_pipeline: PipelineFactory
) -> None:
    inbox = _inbox(tmp_path)
    shutil.copyfile(corpus / "pdf" / "multipage.pdf", inbox / "multipage.pdf")
    analyzer = FlorenceAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=8))
    config = make_config(tmp_path, tiny_model, metadata={"write": False}, ocr={"tiles": "never"})
    pipeline = open_test_pipeline(config, analyzer)
    pipeline.offer([inbox / "multipage.pdf"])
    pipeline.drain()
    info = _info(pipeline, inbox / "multipage.pdf")
    assert info["state"] == "indexed" and len(info["pages"]) == 3
    with pipeline.db.transaction() as s:
        from daemon.index.pages import pages_of

        stored = pages_of(s, info_image_id(s, info["path"]))
    assert [p.number for p in stored] == [1, 2, 3]
    assert all(set(analyzer.tasks) <= set(p.results) for p in stored)


def info_image_id(session: object, path: str) -> int:
    f = records.file_by_path(session, path)  # type: ignore[arg-type]
    assert f is not None and f.image_id is not None
    return f.image_id


def test_the_daemon_takes_a_scan_as_the_scanner_writes_it(tmp_path: Path) -> None:
    """The real daemon and watcher: half a PDF, a pause, the rest; then our own metadata write comes back."""
    from daemon.testing.helpers import RunningDaemon, read_tags

    inbox = _inbox(tmp_path)
    whole = write_scan(tmp_path / "scan.pdf", pages=2).read_bytes()
    daemon = RunningDaemon(make_config(tmp_path, pdf={"dpi": 100})).started()
    try:
        target = inbox / "scan_0001.pdf"
        with target.open("wb") as out:  # as a scanner's "scan to folder" writes it: in pieces, with pauses
            out.write(whole[: len(whole) // 2])
            out.flush()
            time.sleep(1.5)
            out.write(whole[len(whole) // 2 :])
        assert wait_until(lambda: daemon.status()["indexed"] == 1 and daemon.status()["pending"] == 0, 60)
        with daemon.db.transaction() as s:
            info = records.file_info(s, str(target))
        assert info is not None and len(info["pages"]) == 2 and info["metadata"]["state"] == "done"
        assert read_tags(target, "XMP-dc:Description")["XMP-dc:Description"] == info["description"]
        analysed = daemon.images_analyzed()
        time.sleep(2)  # our write's own events have come and gone
        assert daemon.images_analyzed() == analysed == 2  # each page once, never again for our write
    finally:
        daemon.stop()


def test_repeated_pages_of_one_pdf_run_the_model_once(tmp_path: Path, open_test_pipeline: PipelineFactory) -> None:
    inbox = _inbox(tmp_path)
    blanks = _blank_pdf(inbox / "separator-sheets.pdf", 4)  # a scanner's blank separator pages
    model = FakeAnalyzer()
    pipeline = open_test_pipeline(make_config(tmp_path, metadata={"write": False}), model)
    pipeline.offer([blanks])
    pipeline.drain()
    assert sum(model.calls) == 1
    pages = _info(pipeline, blanks)["pages"]
    assert [p["page"] for p in pages] == [1, 2, 3, 4] and len({p["caption"] for p in pages}) == 1
