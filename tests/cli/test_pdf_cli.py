"""A scanned PDF on the command line: search names the page, show lists every page, export has each page.

The answers come from a query server as the running daemon gives them, and
``--local`` from the index itself, on both backends: the same, word for word.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import database_url
from daemon.index import records
from daemon.index.meaning import Meaning
from daemon.model.query_embed import query_encoder
from daemon.service import wire
from daemon.service.queries import Queries
from daemon.service.query import QueryServer
from daemon.testing.documents import write_scan
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config, write_toml
from tests.service.test_query import run


@pytest.fixture
def served(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory) -> Iterator[tuple[Path, Path, Any]]:
    """A 3-page scan indexed, a query server answering for it; (config file, the PDF, the server)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scan = write_scan(inbox / "statement.pdf", pages=3)
    config = make_config(tmp_path, index={"database": database}, metadata={"write": False})
    pipeline = open_test_pipeline(config, FakeAnalyzer())
    pipeline.offer([scan])
    pipeline.drain()
    cfg = write_toml(
        tmp_path / "config.toml",
        {"watch": {"folders": [str(inbox)]}, "index": {"database": database}, "search": {"semantic": False}},
    )
    identity = wire.index_identity(database_url(config.index.database))
    server = QueryServer(Queries(config, pipeline.db, Meaning(config.search, query_encoder), None), identity)
    assert server.start()
    yield cfg, scan, server
    server.stop()


def test_search_show_and_export_name_the_pages(
    served: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg, scan, server = served
    code, out, _ = run(capsys, "--config", str(cfg), "show", str(scan), "--json")
    pages = json.loads(out)["pages"]
    assert code == 0 and [p["page"] for p in pages] == [1, 2, 3]
    word = pages[2]["ocr"].split()[0]
    for extra in ([], ["--json"]):
        there = run(capsys, "--config", str(cfg), "search", f"text:{word}", *extra)
        assert there == run(capsys, "--config", str(cfg), "search", f"text:{word}", *extra, "--local")
        if extra:
            assert [(h["path"], h["page"]) for h in json.loads(there[1])] == [(str(scan), 3)]
        else:
            assert there[1].splitlines()[0] == f"{scan}  (page 3)"
    assert server.served == 3  # the show and the two searches: the daemon answered
    shown = run(capsys, "--config", str(cfg), "show", str(scan))
    assert shown == run(capsys, "--config", str(cfg), "show", str(scan), "--local")
    lines = shown[1].splitlines()
    assert [ln.split()[:2] for ln in lines if ln.startswith("page ")] == [["page", "1"], ["page", "2"], ["page", "3"]]
    assert any(word in ln for ln in lines[lines.index(next(ln for ln in lines if ln.startswith("page 3"))) :])
    out_file = tmp_path / "export.jsonl"
    assert (
        run(
            capsys,
            "--config",
            str(cfg),
            "export",
            "--format",
            "jsonl",
            "--task",
            "<OCR_WITH_REGION>",
            str(out_file),
        )[0]
        == 0
    )
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["path"], r["page"], r["width"], r["height"]) for r in rows] == [
        (str(scan), n, 1654, 2339) for n in (1, 2, 3)
    ]
    assert all(r["regions"] for r in rows) and word in rows[2]["ocr"]


def test_the_desktop_search_bars_say_the_page(served: tuple[Path, Path, Any], tmp_path: Path) -> None:
    """What GNOME Shell and KRunner show under a document's name: the page, then the caption."""
    from daemon.config import load_config
    from daemon.desktop.answers import Answers

    cfg, scan, server = served
    answers = Answers(load_config(cfg))
    try:
        with server.queries.db.transaction() as s:
            word = records.file_info(s, str(scan))["pages"][1]["ocr"].split()[0]  # type: ignore[index]
        [found] = answers.search([f"text:{word}"])
        assert found.path == str(scan) and found.description.startswith("page 2: a ")
        served_before = server.served
        server.stop()  # the daemon gone: the bar searches the index itself, and says the same
        [again] = Answers(load_config(cfg)).search([f"text:{word}"])
        assert again.description == found.description and server.served == served_before
    finally:
        answers.close()
