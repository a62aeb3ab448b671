"""Every command that reads the index answers the same on SQLite and on PostgreSQL.

One scenario, run on each backend in turn (the ``database`` fixture): a
real scan with the tiny Florence-2, then ``status``, ``show``, ``search``,
``retag``, ``export``, ``find`` and the web page. Each run checks what it
can know in advance, and what it saw is kept (paths relative to the test's
folder, scores left out) so that the second backend's run must see exactly
what the first one saw: the same model on the same pixels says the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import database_url, load_config
from daemon.index.db import Database
from daemon.testing.helpers import copy_corpus, write_toml
from daemon.web.serve import WebApp

INDEXED = ["pillow/hopper.jpg", "pillow/flower.jpg", "pillow/exif.png"]
BROKEN = "pillow/bad/truncated_jpeg.jpg"
SEEN: dict[str, dict[str, Any]] = {}  # backend -> what its run saw


class Cli:
    """``florence-watch --config CFG ...`` in this process, output captured; paths made relative."""

    def __init__(self, cfg: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cfg, self.root, self.capsys = cfg, root, capsys

    def __call__(self, *args: str) -> tuple[str, str]:
        """Run a command that must succeed; its stdout and stderr."""
        self.capsys.readouterr()
        rc = main(["--config", str(self.cfg), *args])
        out, err = self.capsys.readouterr()
        assert rc == 0, (args, err)
        return out, err

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json")[0])

    def rel(self, path: str) -> str:
        return str(Path(path).relative_to(self.root))


def test_commands_give_the_same_answers_on_each_backend(
    database: str, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = "postgresql" if "://" in database else "sqlite"
    inbox = tmp_path / "inbox"
    files = copy_corpus([*INDEXED, BROKEN], inbox)
    cfg = write_toml(
        tmp_path / "config.toml",
        {
            "watch": {"folders": [str(inbox)]},
            "model": {"name": str(tiny_model), "num_beams": 1, "max_new_tokens": 16},
            "index": {"database": database, "max_attempts": 1},
            "serve": {"thumbnails": str(tmp_path / "thumbnails")},
        },
    )
    cli = Cli(cfg, tmp_path, capsys)
    out, _ = cli("scan", str(inbox))
    assert out == "indexed 3, failed 1, pending 0\n"
    seen: dict[str, Any] = {"status": _status(cli), "show": {cli.rel(str(f)): _show(cli, f) for f in files[:3]}}
    seen["search"] = _search(cli, seen["show"])
    seen["retag"] = [cli("retag", "--dry-run")[1], cli("retag")[1]]
    assert seen["retag"] == [
        "3 indexed file(s): 0 would change, 0 failed\n",
        "3 indexed file(s): 0 changed, 0 failed\n",
    ]
    seen["export"] = _export(cli, tmp_path)
    seen["find"] = _find(cli, seen["show"])
    seen["web"] = _web(cfg, database, seen["show"])
    for other, saw in SEEN.items():
        assert seen == saw, f"{backend} answers differently from {other}"
    SEEN[backend] = seen


def _status(cli: Cli) -> dict[str, Any]:
    st = cli.json("status")
    assert (st["indexed"], st["failed"], st["pending"]) == (3, 1, 0)
    assert [cli.rel(f["path"]) for f in st["failures"]] == [f"inbox/{Path(BROKEN).name}"]
    return {k: v for k, v in st.items() if k not in ("workers", "failures")}


def _show(cli: Cli, path: Path) -> dict[str, Any]:
    info = cli.json("show", str(path))
    assert info["state"] == "indexed" and info["metadata"]["state"] == "done" and info["caption"]
    info["path"] = cli.rel(info["path"])
    info["metadata"]["target"] = cli.rel(info["metadata"]["target"])
    return dict(info)


def _search(cli: Cli, shown: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """The matches of a few queries: by path, by a word of each caption, by filters alone."""
    words = [_word(info["caption"]) for info in shown.values()]
    queries: list[tuple[str, ...]] = [("path:hopper",), ("path:inbox -path:flower",), (" OR ".join(words),)]
    queries += [(w,) for w in words] + [("", "--has-text", "--since", "2000-01-01"), ("", "--folder", "/nowhere")]
    found: dict[str, list[tuple[str, str]]] = {}
    for q in queries:
        hits = cli.json("search", *q) if q[1:] else cli.json("search", *q, "--folder", str(cli.root))
        # Sorted: the backends rank alike matches differently (bm25, ts_rank).
        found[" ".join(q)] = sorted((cli.rel(h["path"]), h["caption"]) for h in hits)
    assert [p for p, _ in found["path:hopper"]] == ["inbox/hopper.jpg"]
    assert [p for p, _ in found["path:inbox -path:flower"]] == ["inbox/exif.png", "inbox/hopper.jpg"]
    assert sorted(p for p, _ in found[" OR ".join(words)]) == sorted(shown)
    assert found[" --folder /nowhere"] == []
    assert [p for p, _ in found[" --has-text --since 2000-01-01"]] == sorted(p for p, i in shown.items() if i["ocr"])
    for path, info in shown.items():
        assert (path, info["caption"]) in found[_word(info["caption"])]
    return found


def _word(caption: str) -> str:
    """A word of *caption* to search for: its longest."""
    return max(re.findall(r"\w+", caption), key=len)


def _export(cli: Cli, root: Path) -> dict[str, Any]:
    _, err = cli("export", "--format", "coco", str(root / "out.json"))
    assert err == f"wrote 3 image(s) to {root / 'out.json'}\n"
    coco = json.loads((root / "out.json").read_text())
    cli("export", "--format", "jsonl", "--task", "ocr-regions", str(root / "out.jsonl"))
    lines = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert [cli.rel(line["path"]) for line in lines] == [f"inbox/{Path(n).name}" for n in sorted(INDEXED)]
    return {
        "images": [(cli.rel(i["file_name"]), i["caption"]) for i in coco["images"]],
        "annotations": coco["annotations"],
        "categories": coco["categories"],
        "jsonl": [{**line, "path": cli.rel(line["path"])} for line in lines],
    }


def _find(cli: Cli, shown: dict[str, dict[str, Any]]) -> list[Any]:
    """find grounds a caption's word (the tiny model loads once a match decodes)."""
    hopper = shown["inbox/hopper.jpg"]
    found = cli.json("find", _word(hopper["caption"]), "--limit", "2")
    assert "inbox/hopper.jpg" in [cli.rel(f["path"]) for f in found]
    return sorted((cli.rel(f["path"]), f["caption"], f["boxes"]) for f in found)


def _web(cfg: Path, database: str, shown: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The web page's search, and the pages of its first match: what the cards name."""
    config = load_config(cfg)
    db = Database(database_url(database))
    try:
        app = WebApp(config, db)
        pages: dict[str, Any] = {}
        for q in ("", "path:hopper", _word(shown["inbox/flower.jpg"]["caption"]), "&since=2000-01-01&has_text=1"):
            page = app.respond(f"/?q={q}")
            assert page.status == 200
            html = page.body.decode()
            names = re.findall(r'<div class="path">([^<]*)</div>', html)
            pages[q] = sorted(names)
            ids = re.findall(r'href="/image/(\d+)"', html)
            assert len(ids) == len(names)
            for file_id in ids[:1]:
                assert app.respond(f"/image/{file_id}").status == 200
                assert app.respond(f"/thumb/{file_id}").status == 200
        assert pages[""] == ["exif.png", "flower.jpg", "hopper.jpg"] and pages["path:hopper"] == ["hopper.jpg"]
        assert "flower.jpg" in pages[_word(shown["inbox/flower.jpg"]["caption"])]
        # Whatever the tiny model read as text (it may read none): the filter keeps just those.
        with_text = sorted(Path(path).name for path, info in shown.items() if info["ocr"])
        assert pages["&since=2000-01-01&has_text=1"] == with_text
        return pages
    finally:
        db.close()
