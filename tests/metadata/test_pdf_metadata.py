"""Our description and keywords in a PDF's own metadata, by real exiftool, through the pipeline.

exiftool writes a PDF as an incremental update: the file as it was stays
byte for byte at its start (``-PDF-update:all=`` gives it back), so every
page draws exactly as before, which the page renders check. A person's
title, author and keywords stay. Encrypted and signed PDFs are indexed but
never written (a signature covers the bytes), with one line saying why.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon import pdf
from daemon.index import records
from daemon.metadata import MetadataWriter
from daemon.testing.documents import write_scan, write_signed
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config, read_tags

TAGS = ("XMP-dc:Description", "XMP-dc:Subject", "PDF:Subject", "PDF:Keywords", "PDF:Title", "PDF:Author")


def _exiftool(*args: str) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-P", *args], check=True)


def _drained(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory, paths: list[Path]) -> object:
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}), FakeAnalyzer())
    pipeline.offer(paths)
    pipeline.drain()
    return pipeline


def _state(pipeline: object, path: Path) -> dict:
    with pipeline.db.transaction() as s:  # type: ignore[attr-defined]
        info = records.file_info(s, str(path))
    assert info is not None
    return info


def test_a_pdf_gets_our_text_as_an_incremental_update_that_keeps_the_pages_and_the_persons_fields(
    tmp_path: Path, corpus: Path, database: str, open_test_pipeline: PipelineFactory
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    titled = inbox / "render.pdf"  # LibreOffice wrote its title: a person's
    shutil.copyfile(corpus / "pdf" / "render.pdf", titled)
    scan = write_scan(inbox / "scan.pdf", pages=2)
    _exiftool("-PDF:Author=Ann Example", "-PDF:Keywords=tax", "-PDF:Keywords=2024", str(scan))
    described = write_scan(inbox / "described.pdf", pages=1)  # a person wrote its subject
    _exiftool("-PDF:Subject=Tax return 2024, as filed", str(described))
    originals = {p: p.read_bytes() for p in (titled, scan)}
    drawn = {p: pdf.read(str(p), 200, 50).keys for p in (titled, scan)}
    pipeline = _drained(tmp_path, database, open_test_pipeline, [titled, scan, described])
    writer = MetadataWriter()
    for path in (titled, scan):
        info = _state(pipeline, path)
        assert info["metadata"]["state"] == "done" and info["metadata"]["target"] == str(path)
        tags = read_tags(path, *TAGS)
        assert tags["XMP-dc:Description"] == tags["PDF:Subject"] == info["description"] != ""
        assert set(info["keywords"]) <= set(tags["XMP-dc:Subject"]) and set(info["keywords"]) <= set(
            map(str, tags["PDF:Keywords"])
        )
        assert pdf.read(str(path), 200, 50).keys == drawn[path]  # every page draws exactly as before
        again = writer.write(
            path,
            alt_text="",
            description=info["description"],
            keywords=info["keywords"],
            previous=info["metadata"]["written"],
            dry_run=True,
        )
        assert again.changed == [], again.changed  # what we wrote reads back as written: no rewrite next time
    writer.close()
    assert titled.read_bytes().startswith(originals[titled])  # appended: the file as it was comes first
    reverted = tmp_path / "reverted.pdf"
    subprocess.run(["exiftool", "-q", "-PDF-update:all=", "-o", str(reverted), str(titled)], check=True)
    assert reverted.read_bytes() == originals[titled]
    assert read_tags(titled, "PDF:Title")["PDF:Title"] == "test_render.odt"
    theirs = read_tags(described, *TAGS)  # their subject keeps our description out of both fields
    assert theirs["PDF:Subject"] == "Tax return 2024, as filed" and "XMP-dc:Description" not in theirs
    assert theirs["XMP-dc:Subject"]  # our keywords still went in
    person = read_tags(scan, *TAGS)
    assert person["PDF:Author"] == "Ann Example"
    assert {"tax", "2024"} <= set(map(str, person["PDF:Keywords"]))


def test_encrypted_and_signed_pdfs_are_indexed_but_never_written(
    tmp_path: Path, corpus: Path, open_test_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    locked = inbox / "owner-locked.pdf"  # opens without a password; changing it needs the owner's
    subprocess.run(["qpdf", "--encrypt", "", "owner", "256", "--", str(corpus / "pdf" / "text.pdf"), str(locked)])
    signed = write_signed(inbox / "signed.pdf")
    before = {p: p.read_bytes() for p in (locked, signed)}
    with caplog.at_level(logging.INFO):
        pipeline = _drained(tmp_path, str(tmp_path / "index.db"), open_test_pipeline, [locked, signed])
    for path, why in ((locked, "the PDF is encrypted"), (signed, "the PDF is signed")):
        info = _state(pipeline, path)
        assert info["state"] == "indexed" and len(info["pages"]) >= 1
        assert info["metadata"]["state"] == "failed" and why in (info["error"] or "")
        assert path.read_bytes() == before[path]
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and path.name in r.getMessage()]
        assert len(lines) == 1 and why in lines[0], lines


def test_a_read_only_pdf_gets_a_sidecar(
    tmp_path: Path, open_test_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.metadata.exiftool as tag

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scan = write_scan(inbox / "archive.pdf", pages=1)
    before = scan.read_bytes()
    real_access = os.access  # root ignores permission bits: refuse writes as a read-only mount would
    monkeypatch.setattr(tag.os, "access", lambda p, mode: False if Path(p) == scan else real_access(p, mode))
    pipeline = _drained(tmp_path, str(tmp_path / "index.db"), open_test_pipeline, [scan])
    info = _state(pipeline, scan)
    sidecar = Path(str(scan) + ".xmp")
    assert info["metadata"]["target"] == str(sidecar) and scan.read_bytes() == before
    assert read_tags(sidecar, "XMP-dc:Description")["XMP-dc:Description"] == info["description"]
