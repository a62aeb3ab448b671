"""serve: the web page over a real index and a real HTTP server; the browser test drives Debian's Chromium."""

from __future__ import annotations

import html
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from daemon.config import Config
from daemon.index.db import Database, File
from daemon.index.search import MARK_END, MARK_START
from daemon.service.watch import walk_candidates
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, copy_corpus, make_config
from daemon.web.serve import make_server, marked, serve_in_thread, url_of

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

# Text a model could produce that must never become markup (or a template expression).
SCRIPT = "<script>window.pwned=1</script>"
BREAKOUT = '"><svg onload=window.pwned=2>'  # out of an attribute, into an element
TEMPLATE = "{{ 7*7 }}"  # would show 49 if model text ever became template source
HOSTILE = f"{SCRIPT} & {BREAKOUT} {TEMPLATE}"  # night.jpg's caption
HOSTILE_DESCRIPTION = f"A night {TEMPLATE} {SCRIPT}"
HOSTILE_LABELS = [BREAKOUT, "<img src=x onerror=window.pwned=3>", TEMPLATE]  # objects, and so keywords
HOSTILE_OCR = [SCRIPT, TEMPLATE]  # text regions, and so the text in the image


class HostileAnalyzer(FakeAnalyzer):
    """The fake model, with hostile text in every field of night.jpg's results."""

    def analyze(self, images: list[Image.Image], pixels: object = None) -> list[dict]:
        out = super().analyze(images, pixels)
        for r, im in zip(out, images, strict=True):
            if im.size == (300, 200):  # night.jpg
                r["<CAPTION>"] = HOSTILE
                r["<MORE_DETAILED_CAPTION>"] = HOSTILE_DESCRIPTION
                r["<OD>"] = {
                    "bboxes": [[10 + 40 * i, 20, 40 + 40 * i, 90] for i in range(len(HOSTILE_LABELS))],
                    "labels": HOSTILE_LABELS,
                }
                r["<OCR_WITH_REGION>"] = {
                    "quad_boxes": [
                        [10, 120 + 30 * i, 200, 120 + 30 * i, 200, 140 + 30 * i, 10, 140 + 30 * i]
                        for i in range(len(HOSTILE_OCR))
                    ],
                    "labels": HOSTILE_OCR,
                }
        return out


class Site:
    def __init__(self, config: Config, db: Database, files: list[Path]) -> None:
        self.config, self.db, self.files = config, db, files
        self.server = make_server(config, db, port=0)
        self.thread = serve_in_thread(self.server)
        self.url = url_of(self.server)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def file_id(self, path: Path) -> int:
        with self.db.transaction() as s:
            return s.query(File).filter(File.path == str(path)).one().id


@pytest.fixture
def site(tmp_path: Path, open_test_pipeline: PipelineFactory) -> Iterator[Site]:
    config = make_config(tmp_path, metadata={"write": True}, serve={"thumbnails": str(tmp_path / "thumbs")})
    names = ["pillow/hopper.jpg", "exiftool/MWG.jpg", "pillow/hopper.png", "pillow/bad/truncated_jpeg.jpg"]
    files = copy_corpus(names, tmp_path / "inbox")
    Image.new("RGB", (300, 200), (20, 20, 30)).save(tmp_path / "inbox" / "night.jpg")  # gets the hostile text
    pipeline = open_test_pipeline(config, HostileAnalyzer())  # closed (database too) when the test ends
    pipeline.offer(walk_candidates(tmp_path / "inbox"))
    pipeline.drain()
    s = Site(config, pipeline.db, [*files, tmp_path / "inbox" / "night.jpg"])
    yield s
    s.server.shutdown()
    s.server.server_close()
    s.thread.join(timeout=10)


def test_front_page_lists_the_newest_images_with_thumbnails(site: Site) -> None:
    status, headers, body = site.get("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert page.count('class="card"') == 4  # the truncated JPEG failed: not in the index
    hopper = site.file_id(site.files[0])
    assert f'href="/image/{hopper}"' in page and f'src="/thumb/{hopper}"' in page


def test_search_box_uses_the_search_language(site: Site) -> None:
    page = site.get("/?q=picture+-path%3Apng")[2].decode()
    assert "hopper.png" not in page and "hopper.jpg" in page and "MWG.jpg" in page
    assert "<mark>picture</mark>" in page
    page = site.get("/?q=&since=not-a-date")[2].decode()
    assert "--since 'not-a-date': not a date" in html.unescape(page)


def test_snippet_markers_become_runs_the_template_marks() -> None:
    assert marked(f"a {MARK_START}red{MARK_END} car") == [("a ", False), ("red", True), (" car", False)]
    assert marked(f"{MARK_START}<b>{MARK_END}{MARK_START}x{MARK_END}") == [("<b>", True), ("x", True)]
    assert marked(f"stray{MARK_END} end, {MARK_START}open") == [("stray end, ", False), ("open", True)]
    assert marked("") == []


def test_thumbnails_are_made_once_and_cached_on_disk(site: Site, tmp_path: Path) -> None:
    fid = site.file_id(site.files[1])
    status, headers, body = site.get(f"/thumb/{fid}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    [cached] = (tmp_path / "thumbs").rglob("*.jpg")
    made = cached.stat().st_mtime_ns
    assert site.get(f"/thumb/{fid}")[2] == body
    assert cached.stat().st_mtime_ns == made
    assert max(Image.open(cached).size) <= 320
    view = site.get(f"/view/{fid}")[2]
    assert Image.open(__import__("io").BytesIO(view)).size == Image.open(site.files[1]).size  # small: not resized


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/../../etc/passwd",
        "/view/..%2f..%2fetc%2fpasswd",
        "/image/999999",
        "/thumb/-1",
        "/image/1/../../x",
        "//etc/passwd",
        "/etc/passwd",
        "/file?path=/etc/passwd",
        "/thumb/1%00",
        "/view/" + "9" * 40,
        "/static/../x",
    ],
)
def test_only_indexed_files_are_served(site: Site, path: str) -> None:
    status, _headers, body = site.get(path)
    assert status == 404
    assert b"root:" not in body


def test_failed_and_deleted_files_are_not_served(site: Site) -> None:
    with site.db.transaction() as s:
        failed = s.query(File).filter(File.state == "failed").one()
    assert site.get(f"/thumb/{failed.id}")[0] == 404
    gone = site.files[2]
    fid = site.file_id(gone)
    from daemon.index import records

    with site.db.transaction(write=True) as s:
        records.mark_deleted(s, str(gone))
    assert site.get(f"/image/{fid}")[0] == 404


def test_every_text_is_escaped_and_nothing_comes_from_elsewhere(site: Site) -> None:
    night = site.file_id(site.files[-1])
    for path in ("/", f"/image/{night}", "/?q=" + urllib.parse.quote(HOSTILE), "/?q=pwned", "/image/999999"):
        status, headers, body = site.get(path)
        page = body.decode()
        assert status in (200, 404)
        assert "<script>window" not in page and "<svg onload" not in page and "<img src=x" not in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "https://" not in page and page.count("http://") == page.count("http://www.w3.org/2000/svg")
    page = html.unescape(site.get(f"/image/{night}")[2].decode())
    for text in (HOSTILE, HOSTILE_DESCRIPTION, *HOSTILE_LABELS, *HOSTILE_OCR):
        assert text in page  # there, as text


def test_an_error_is_a_500_page_and_the_server_goes_on(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(target: str) -> None:
        raise RuntimeError(f"<b>{target}</b>")

    monkeypatch.setattr(site.server.RequestHandlerClass.app, "respond", fail)  # type: ignore[attr-defined]
    status, headers, body = site.get("/?q=%3Cb%3E")
    assert status == 500 and b"<h1>Something went wrong</h1>" in body and b"<b>" not in body
    assert "default-src 'self'" in headers["Content-Security-Policy"] and "error serving" in caplog.text
    monkeypatch.undo()
    assert site.get("/")[0] == 200


def test_image_page_shows_results_overlay_and_what_was_written(site: Site) -> None:
    fid = site.file_id(site.files[1])
    page = site.get(f"/image/{fid}")[2].decode()
    assert 'data-layer="objects"' in page and 'data-layer="text"' in page
    assert page.count("<polygon") == 2  # one object, one text region (the fake model's)
    assert "In the file's metadata" in page and "XMP-iptcCore:AltTextAccessibility" in page
    assert str(site.files[1]) in page


def test_in_a_real_browser_search_open_and_toggle_the_overlay(site: Site, chrome: WebDriver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome
    wait = WebDriverWait(driver, 20)
    driver.get(site.url)
    box = driver.find_element(By.ID, "q")
    box.send_keys("label:thing path:hopper -path:png", Keys.ENTER)
    wait.until(lambda d: "label%3Athing" in d.current_url or "label:thing" in d.current_url)
    cards = driver.find_elements(By.CSS_SELECTOR, "a.card")
    shots = os.environ.get("FLORENCE_WATCH_SCREENSHOTS")  # how docs/screenshots/ are made
    if shots:
        driver.save_screenshot(os.path.join(shots, "search.png"))
    assert [c.find_element(By.CLASS_NAME, "path").text for c in cards] == ["hopper.jpg"]
    assert driver.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    cards[0].click()
    wait.until(lambda d: d.find_elements(By.ID, "overlay"))
    wait.until(
        lambda d: d.execute_script(
            "const i = document.getElementById('picture');return i.complete && i.naturalWidth > 0"
        )
    )
    objects = driver.find_element(By.CSS_SELECTOR, 'g.layer[data-layer="objects"] polygon')
    assert objects.is_displayed()
    # The overlay lies on the picture: the box's top-left corner is the picture's top-left corner.
    picture = driver.find_element(By.ID, "picture").rect
    assert abs(objects.rect["x"] - picture["x"]) < 4 and abs(objects.rect["y"] - picture["y"]) < 4
    assert 0 < objects.rect["width"] <= picture["width"] / 2 + 4
    shot = tmp_path / "image-page.png"
    driver.save_screenshot(str(shot))
    if shots:
        driver.save_screenshot(os.path.join(shots, "image.png"))
    driver.find_element(By.CSS_SELECTOR, 'input.toggle[data-layer="objects"]').click()
    assert not objects.is_displayed()
    assert driver.find_element(By.CSS_SELECTOR, 'g.layer[data-layer="text"] polygon').is_displayed()
    assert Image.open(shot).size[0] >= 1000


# Did injected code run (window.pwned), or add elements: the page's own scripts (one, the image page's
# layer toggles) and no inline event handlers.
_INJECTED = """return {pwned: typeof window.pwned, scripts: document.scripts.length,
  handlers: document.querySelectorAll('[onload], [onerror]').length}"""


def _rows(driver: WebDriver, table: str) -> dict[str, str]:
    """A two-column table as the browser shows it: header text -> cell text."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"{table} tr")
    return {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text for r in rows}


def test_in_a_real_browser_the_models_text_is_only_text(site: Site, chrome: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    driver = chrome
    night = site.file_id(site.files[-1])
    # The grid: the caption as the card's text and as its picture's alt text.
    driver.get(site.url)
    card = driver.find_element(By.CSS_SELECTOR, f'a.card[href="/image/{night}"]')
    card_caption = card.find_element(By.CLASS_NAME, "cap").text
    assert card_caption == HOSTILE
    assert card.find_element(By.TAG_NAME, "img").get_attribute("alt") == HOSTILE
    assert driver.execute_script(_INJECTED) == {"pwned": "undefined", "scripts": 0, "handlers": 0}
    # A snippet: the words found are <mark>ed, the rest of the caption is still text.
    driver.get(url_of(site.server, q="caption:pwned"))
    snip = driver.find_element(By.CSS_SELECTOR, f'a.card[href="/image/{night}"] .snip')
    snip_text = snip.text
    assert SCRIPT in snip_text and BREAKOUT in snip_text
    assert {m.text for m in snip.find_elements(By.TAG_NAME, "mark")} == {"pwned"}
    assert driver.execute_script(_INJECTED) == {"pwned": "undefined", "scripts": 0, "handlers": 0}
    # What people type comes back as text too.
    driver.get(url_of(site.server, q=HOSTILE, folder=BREAKOUT))
    assert driver.find_element(By.ID, "q").get_attribute("value") == HOSTILE
    assert driver.find_element(By.NAME, "folder").get_attribute("value") == BREAKOUT
    assert driver.title == f"florence-watch: {HOSTILE}"
    assert driver.execute_script(_INJECTED) == {"pwned": "undefined", "scripts": 0, "handlers": 0}

    driver.get(f"{site.url}image/{night}")
    assert driver.execute_script(_INJECTED) == {"pwned": "undefined", "scripts": 1, "handlers": 0}
    assert driver.title == HOSTILE and driver.find_element(By.TAG_NAME, "h1").text == HOSTILE
    assert driver.find_element(By.ID, "picture").get_attribute("alt") == HOSTILE
    facts = _rows(driver, "table.facts")
    assert facts["Caption"] == HOSTILE and facts["Description"] == HOSTILE_DESCRIPTION
    assert facts["Keywords"] == ", ".join(HOSTILE_LABELS) and facts["Text in the image"] == " ".join(HOSTILE_OCR)
    labels = driver.find_elements(By.CSS_SELECTOR, "#overlay text.label")
    assert all(t.is_displayed() for t in labels)
    label_texts = [t.text for t in labels]
    assert label_texts == [*HOSTILE_LABELS, *HOSTILE_OCR]
    assert driver.execute_script("return [...document.querySelectorAll('#overlay title')].map(t => t.textContent)") == [
        *HOSTILE_LABELS,
        *HOSTILE_OCR,
    ]
    written = _rows(driver, "h2 ~ table")
    assert written["XMP-iptcCore:AltTextAccessibility"] == HOSTILE
    assert written["XMP-dc:Description"] == HOSTILE_DESCRIPTION
    assert written["XMP-dc:Subject"] == ", ".join(HOSTILE_LABELS)
    # {{ 7*7 }} stayed itself wherever it was shown (the labels: compared whole above); nothing made it 49.
    spots = [
        driver.title,
        facts["Caption"],
        facts["Description"],
        facts["Keywords"],
        facts["Text in the image"],
        written["XMP-dc:Description"],
        written["XMP-dc:Subject"],
        card_caption,
        snip_text,
    ]
    assert all(TEMPLATE in text and "49" not in text for text in spots)


def test_serve_command_listens_on_loopback_and_answers(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    from daemon.testing.helpers import write_config
    from tests.cli.test_cli import REPO

    cfg = write_config(tmp_path, tmp_path / "no-model")  # serving needs no model
    with cfg.open("a") as fh:
        fh.write(f'[serve]\nport = 0\nthumbnails = "{tmp_path / "thumbs"}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "--config", str(cfg), "serve"], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        m = re.fullmatch(r"serving the index at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)\n", line)
        assert m, line
        with urllib.request.urlopen(m.group(1), timeout=30) as r:
            assert r.status == 200 and b"The newest images" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        proc.stderr.close()


def test_serve_port_in_config_is_checked(tmp_path: Path) -> None:
    from daemon.config import parse_config
    from daemon.errors import ConfigError

    assert parse_config({"serve": {"port": 9000}}).serve.port == 9000
    with pytest.raises(ConfigError, match=r"serve\.port"):
        parse_config({"serve": {"port": 70000}})
