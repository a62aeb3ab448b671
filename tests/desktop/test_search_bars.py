"""GNOME Shell's and KRunner's searches, end to end: a real session bus of our own, the provider started
by it from the files ``install-service --desktop`` wrote, the real daemon with the tiny Florence-2 on
both backends answering, and the real ``xdg-open`` handing what a person picks to the default viewer."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from daemon.cli import main
from daemon.config import database_url
from daemon.desktop.answers import DESCRIPTION_CHARS, NAME_CHARS, clean
from daemon.desktop.thumbs import file_uri
from daemon.index import records
from daemon.index.db import Database, Embedding
from daemon.results import TaskResults
from daemon.service.query import REFRESH_S
from daemon.testing.helpers import CORPUS, FakeAnalyzer, PipelineFactory, make_config, wait_until, write_toml
from daemon.testing.postgres import free_port
from tests.desktop.bus import GNOME, KRUNNER, SessionBus, Viewer, desktop_env
from tests.service.test_e2e import DaemonProcess

PICTURES = ["pillow/hopper.jpg", "pillow/hopper.png", "pillow/flower.webp", "exiftool/IPTC.jpg"]


class Desk:
    """A person's session: the inbox, the index, the bus, the viewer, and the daemon while it runs."""

    def __init__(self, root: Path, cfg: Path, database: str) -> None:
        self.root, self.cfg, self.inbox = root, cfg, root / "inbox"
        self.db = Database(database_url(database))
        self.viewer = Viewer(root)
        self.daemon: DaemonProcess | None = None
        self.bus: SessionBus | None = None

    def caption(self, path: Path) -> str:
        with self.db.transaction() as s:
            info = records.file_info(s, str(path))
        assert info is not None
        return str(info["caption"])

    def opened_only(self, before: int, expected: str) -> None:
        """Since *before*, the viewer got *expected* and nothing else. The openings were asked for one
        after another, but each xdg-open runs on its own: wait for *expected*, then a moment for any
        other one started before it."""
        assert wait_until(lambda: expected in self.viewer.opened()[before:], timeout=15), self.viewer.opened()
        time.sleep(0.5)
        assert self.viewer.opened()[before:] == [expected]

    def opened_after(self, before: int, count: int = 1) -> list[str]:
        assert wait_until(lambda: len(self.viewer.opened()) >= before + count, timeout=15), self.viewer.opened()
        return self.viewer.opened()[before:]


@pytest.fixture
def desk(
    tmp_path: Path, database: str, tiny_model: Path, minilm_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Desk]:
    env = desktop_env(tmp_path)
    for key in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "WAYLAND_DISPLAY"):
        monkeypatch.setenv(key, env[key])  # install-service, below, writes where the bus reads
    (tmp_path / "inbox").mkdir()
    cfg = write_toml(
        tmp_path / "config.toml",
        {
            "watch": {"folders": [str(tmp_path / "inbox")], "settle_seconds": 0.3},
            "model": {"name": str(tiny_model), "num_beams": 1, "max_new_tokens": 16},
            "index": {"database": database},
            "metadata": {"write": False},
            "search": {"semantic": True, "embedding_model": str(minilm_folder)},
            "serve": {"port": free_port()},
        },
    )
    d = Desk(tmp_path, cfg, database)
    d.daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        d.daemon.wait_ready()
        for name in PICTURES:
            shutil.copyfile(CORPUS / name, d.inbox / Path(name).name)
        assert wait_until(lambda: _indexed(d.db) == len(PICTURES), timeout=180), d.daemon.log.read_text()[-3000:]
        assert wait_until(lambda: _count(d.db, Embedding) == len(PICTURES), timeout=120)
        time.sleep(REFRESH_S * 1.5)  # the daemon's query service takes in new vectors every REFRESH_S
        assert main(["--config", str(cfg), "install-service", "--desktop"]) == 0
        d.bus = SessionBus(env, tmp_path / "bus.log")
        yield d
    finally:
        if d.bus is not None:
            d.bus.stop()
        if d.daemon is not None:
            d.daemon.stop()
        _stop_page(cfg)
        d.db.close()


def _indexed(db: Database) -> int:
    with db.transaction() as s:
        st = records.status(s)
    return int(st["indexed"]) if st["pending"] == 0 else -1


def _count(db: Database, table: Any) -> int:
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _stop_page(cfg: Path) -> None:
    """The web page LaunchSearch started, in a session of its own: found by its command line."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(cfg).encode() in argv and b"serve" in argv:
            os.kill(int(proc.name), signal.SIGTERM)


def _names(metas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"].value: {k: v.value for k, v in m.items()} for m in metas}


def _check_thumbnail(icon: str, picture: Path, cache: Path) -> None:
    assert Path(icon).parent == cache / "thumbnails" / "normal", icon
    with Image.open(icon) as im:
        assert im.format == "PNG" and max(im.size) <= 128
        assert im.info["Thumb::URI"] == file_uri(str(picture))
        assert im.info["Thumb::MTime"] == str(int(picture.stat().st_mtime))


@pytest.mark.slow
def test_gnome_shell_finds_shows_and_opens_what_the_daemon_indexed(desk: Desk) -> None:
    assert desk.bus is not None
    bus = desk.bus
    reply = bus.gdbus(GNOME, "GetInitialResultSet", "['hopper']")  # GDBus: GNOME Shell's own client
    ids = re.findall(r"'(fw-\d+)'", reply)
    assert ids and len(ids) <= 20, reply
    started = time.monotonic()
    again = bus.call(GNOME, "GetInitialResultSet", "as", ["hopper"])
    metas = bus.call(GNOME, "GetResultMetas", "as", again)
    print(f"\nGNOME Shell: a search and its metas, warm, in {time.monotonic() - started:.3f} s")
    assert again == ids
    assert len(metas) == len(ids)  # one meta per id, or GNOME Shell drops them all
    shown = _names(metas)
    assert {"hopper.jpg", "hopper.png"} <= set(shown), shown
    cache = Path(os.environ["XDG_CACHE_HOME"])
    for name in ("hopper.jpg", "hopper.png"):
        picture = desk.inbox / name
        assert shown[name]["description"] == clean(desk.caption(picture), DESCRIPTION_CHARS) != ""
        _check_thumbnail(shown[name]["gicon"], picture, cache)
    narrower = bus.call(GNOME, "GetSubsearchResultSet", "asas", ids[:1], ["hopper", "jpg"])
    first = next(name for name, meta in shown.items() if meta["id"] == ids[0])
    assert narrower == (ids[:1] if first == "hopper.jpg" else [])  # only among what was shown, as GNOME means it
    jpg, png = shown["hopper.jpg"]["id"], shown["hopper.png"]["id"]

    before = len(desk.viewer.opened())
    for refused in ("fw-987654", "/etc/passwd", "file:///etc/passwd", "--help"):
        bus.call(GNOME, "ActivateResult", "sasu", refused, ["hopper"], 0)
    bus.call(GNOME, "ActivateResult", "sasu", jpg, ["hopper"], 0)  # the one allowed, after the refused
    desk.opened_only(before, str(desk.inbox / "hopper.jpg"))
    with desk.db.transaction(write=True) as s:
        records.mark_deleted(s, str(desk.inbox / "hopper.png"))  # left the index, still on disk
    bus.call(GNOME, "ActivateResult", "sasu", png, ["hopper"], 0)
    bus.call(GNOME, "ActivateResult", "sasu", jpg, ["hopper"], 0)
    desk.opened_only(before + 1, str(desk.inbox / "hopper.jpg"))  # not hopper.png

    bus.call(GNOME, "LaunchSearch", "asu", ["hopper"], 0)  # starts the web page, then opens it
    url = desk.opened_after(before + 2)[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?q=hopper", url), url
    page = urllib.request.urlopen(url, timeout=30).read().decode()
    assert "hopper.jpg" in page


@pytest.mark.slow
def test_krunner_matches_runs_and_never_offers_a_file_gone_from_disk(desk: Desk) -> None:
    assert desk.bus is not None and desk.daemon is not None
    bus = desk.bus
    assert [list(a) for a in bus.call(KRUNNER, "Actions")] == [
        ["folder", "Open the containing folder", "document-open-folder"]
    ]
    matches = bus.call(KRUNNER, "Match", "s", "hopper")
    assert 0 < len(matches) <= 20
    relevance = [m[4] for m in matches]
    assert relevance[0] == 1.0 and relevance == sorted(relevance, reverse=True)
    by_name = {m[1]: m for m in matches}
    cache = Path(os.environ["XDG_CACHE_HOME"])
    for name in ("hopper.jpg", "hopper.png"):
        _id, _text, icon, kind, _rel, props = by_name[name]
        picture = desk.inbox / name
        assert kind == 30
        assert props["subtext"].value == clean(desk.caption(picture), DESCRIPTION_CHARS)
        assert props["urls"].value == [file_uri(str(picture))]
        _check_thumbnail(icon, picture, cache)
    png = by_name["hopper.png"][0]
    before = len(desk.viewer.opened())
    bus.call(KRUNNER, "Run", "ss", png, "")
    assert desk.opened_after(before) == [str(desk.inbox / "hopper.png")]
    bus.call(KRUNNER, "Run", "ss", png, "folder")
    assert desk.opened_after(before + 1) == [str(desk.inbox)]
    assert bus.call(KRUNNER, "Match", "s", "h") == []  # one letter: KRunner asks at every key press

    # The daemon stopped, the file deleted: the provider searches the index itself, which still lists it.
    desk.daemon.stop()
    desk.daemon = None
    (desk.inbox / "hopper.png").unlink()
    names = [m[1] for m in bus.call(KRUNNER, "Match", "s", "hopper")]
    assert "hopper.jpg" in names and "hopper.png" not in names, names
    jpg = next(m[0] for m in bus.call(KRUNNER, "Match", "s", "hopper") if m[1] == "hopper.jpg")
    bus.call(KRUNNER, "Run", "ss", png, "")  # handed out before it went: refused now
    bus.call(KRUNNER, "Run", "ss", jpg, "")
    desk.opened_only(before + 2, str(desk.inbox / "hopper.jpg"))


class HostileModel(FakeAnalyzer):
    """Captions as a model (or a person's text, OCR'd) could make them: markup, escapes, control codes."""

    CAPTION = "<b>bold</b> &amp; <span foreground='red'>x</span>\x1b[31m red\x07\n\tsecond line " + "long " * 400

    def describe(self, im: Image.Image) -> TaskResults:
        results = super().describe(im)
        return {**results, "<CAPTION>": self.CAPTION, "<MORE_DETAILED_CAPTION>": self.CAPTION}


def test_hostile_captions_names_and_queries_reach_the_shells_as_short_plain_lines(
    tmp_path: Path, open_test_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = desktop_env(tmp_path)
    for key in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(key, env[key])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    name = "hostile <i>&lt;\x01\u202e" + "n" * 200 + ".png"  # 255 bytes is the most a name may have
    Image.new("RGB", (40, 30), (1, 2, 3)).save(inbox / name)
    config = make_config(tmp_path, metadata={"write": False})
    pipeline = open_test_pipeline(config, HostileModel())
    pipeline.offer([inbox / name])
    pipeline.drain()
    cfg = write_toml(
        tmp_path / "config.toml",
        {
            "watch": {"folders": [str(inbox)]},
            "index": {"database": config.index.database},
            "search": {"semantic": False},
        },
    )
    assert main(["--config", str(cfg), "install-service", "--desktop"]) == 0
    bus = SessionBus(env)  # no daemon runs: the provider searches the index itself
    try:
        ids = bus.call(GNOME, "GetInitialResultSet", "as", ["hostile"])
        (meta,) = bus.call(GNOME, "GetResultMetas", "as", ids)
        shown, description = meta["name"].value, meta["description"].value
        assert len(shown) <= NAME_CHARS and shown.endswith("…") and shown.startswith("hostile <i>&lt; ")
        assert len(description) <= DESCRIPTION_CHARS and description.endswith("…")
        # Plain text, markup and all: GNOME Shell (42 on) and KRunner escape it themselves.
        assert description.startswith("<b>bold</b> &amp; <span foreground='red'>x</span> [31m red second line long")
        for text in (shown, description):
            assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e]", text), ascii(text)
        (match,) = bus.call(KRUNNER, "Match", "s", "hostile")
        assert (match[1], match[5]["subtext"].value) == (shown, description)
        # (No NUL: a D-Bus string cannot hold one, so no shell can send it.)
        for query in ('"unclosed', "x" * 100_000, "\x01\x1b[2J hostile", "caption:", "-hostile", "OR OR"):
            assert isinstance(bus.call(KRUNNER, "Match", "s", query), list)
            assert isinstance(bus.call(GNOME, "GetInitialResultSet", "as", query.split() or [query]), list)
        assert bus.call(GNOME, "GetResultMetas", "as", ["fw-1", "not-ours"])[1]["id"].value == "not-ours"
        print(json.dumps({"name": shown, "description": description[:60]}))
    finally:
        bus.stop()
