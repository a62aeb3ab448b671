"""Shared fixtures: the foreign corpus, a tiny Florence-2 on disk, configs, a thread-leak guard."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.results import TaskResults
from daemon.config import Config, parse_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLORENCE_WATCH_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus"
REAL_FILES = SHARED / "florence-2-large-files"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never touch the network
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {CORPUS} (set FLORENCE_WATCH_SHARED)")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Florence-2 checkpoint folder, built once per session."""
    from daemon.testing.tiny_florence import build_tiny_florence

    return build_tiny_florence(tmp_path_factory.mktemp("tiny-florence"))


def copy_corpus(names: list[str], dest: Path) -> list[Path]:
    """Copy corpus files (relative names) into *dest*, writable like a user's own files."""
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dest / Path(name).name
        shutil.copyfile(CORPUS / name, target)
        target.chmod(0o644)
        out.append(target)
    return out


def make_config(tmp_path: Path, model: Path | str = "auto", **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "watch": {"folders": [str(tmp_path / "inbox")], "settle_seconds": 0.3},
        "model": {"name": str(model), "num_beams": 1, "max_new_tokens": 16, "batch_size": 4},
        "index": {"database": str(tmp_path / "index.db"), "max_attempts": 1},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return parse_config(data, source="test")


def write_config(tmp_path: Path, model: Path | str, **sections: dict[str, Any]) -> Path:
    cfg = make_config(tmp_path, model, **sections)
    path = tmp_path / "config.toml"
    lines = [
        "[watch]", f"folders = [{str(cfg.watch.folders[0])!r}]", f"settle_seconds = {cfg.watch.settle_seconds}",
        "[model]", f"name = {str(model)!r}", "num_beams = 1", "max_new_tokens = 16",
        "[index]", f"database = {cfg.index.database!r}", f"max_attempts = {cfg.index.max_attempts}",
        "[metadata]", f"write = {'true' if cfg.metadata.write else 'false'}",
    ]
    path.write_text("\n".join(lines).replace("'", '"') + "\n", encoding="utf-8")
    return path


class FakeAnalyzer:
    """Fast stand-in for FlorenceAnalyzer (its real twin is tested in test_analyze and test_e2e).

    The output depends on the pixels, so different images get different text.
    """

    model_id = "fake-florence"
    tasks = ("<CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>", "<OCR_WITH_REGION>")
    batch_size = 4

    def __init__(self) -> None:
        self.calls: list[int] = []

    def preprocess(self, image: Image.Image) -> None:
        return None

    def analyze(self, images: list[Image.Image], pixels: object = None) -> list[TaskResults]:
        self.calls.append(len(images))
        out = []
        for im in images:
            r, g, b = (int(v) for v in im.resize((1, 1)).getpixel((0, 0)))
            shade = "bright" if r + g + b > 380 else "dark"
            out.append({
                "<CAPTION>": f"a {shade} picture {r}-{g}-{b}",
                "<MORE_DETAILED_CAPTION>": f"A {shade} picture, {im.width} by {im.height} pixels.",
                "<OD>": {"bboxes": [[0, 0, im.width // 2, im.height // 2]], "labels": [f"{shade} thing"]},
                "<OCR_WITH_REGION>": {"quad_boxes": [[0, 0, 5, 0, 5, 5, 0, 5]], "labels": [f"text{r}"]},
            })
        return out


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves threads running (watchdog's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
                  and not t.name.startswith("pydevd")]
        if not leaked:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
