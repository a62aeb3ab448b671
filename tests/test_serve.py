"""serve: the web page over a real index and a real HTTP server; the browser test drives Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from daemon.config import Config, database_url
from daemon.db import Database, File
from daemon.pipeline import Pipeline
from daemon.serve import make_server, serve_in_thread, url_of
from daemon.watch import walk_candidates

from daemon.testing.helpers import FakeAnalyzer, copy_corpus, make_config

HOSTILE = '<script>alert("x")</script> & "quotes"'


class HostileAnalyzer(FakeAnalyzer):
    """Text a model could produce that must never become markup."""

    def analyze(self, images: list[Image.Image], pixels: object = None) -> list[dict]:
        out = super().analyze(images, pixels)
        for r, im in zip(out, images):
            if im.size == (300, 200):  # night.jpg
                r["<CAPTION>"] = HOSTILE
                r["<OD>"]["labels"] = ["<img src=x onerror=alert(1)>"]
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
def site(tmp_path: Path) -> Iterator[Site]:
    config = make_config(tmp_path, metadata={"write": True}, serve={"thumbnails": str(tmp_path / "thumbs")})
    names = ["pillow/hopper.jpg", "exiftool/MWG.jpg", "pillow/hopper.png", "pillow/bad/truncated_jpeg.jpg"]
    files = copy_corpus(names, tmp_path / "inbox")
    Image.new("RGB", (300, 200), (20, 20, 30)).save(tmp_path / "inbox" / "night.jpg")  # gets the hostile caption
    from daemon.tag import MetadataWriter

    db = Database(database_url(config.index.database))
    with MetadataWriter(config.metadata) as writer:
        pipeline = Pipeline(config, db, HostileAnalyzer(), writer)
        pipeline.offer(walk_candidates(tmp_path / "inbox"))
        pipeline.drain()
        pipeline.close()
    s = Site(config, db, [*files, tmp_path / "inbox" / "night.jpg"])
    yield s
    s.server.shutdown()
    s.server.server_close()
    s.thread.join(timeout=10)
    db.close()


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
    assert "--since &#x27;not-a-date&#x27;: not a date" in page


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


@pytest.mark.parametrize("path", [
    "/thumb/../../etc/passwd", "/view/..%2f..%2fetc%2fpasswd", "/image/999999", "/thumb/-1", "/image/1/../../x",
    "//etc/passwd", "/etc/passwd", "/file?path=/etc/passwd", "/thumb/1%00", "/view/" + "9" * 40, "/static/../x",
])
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
    from daemon import index

    with site.db.transaction(write=True) as s:
        index.mark_deleted(s, str(gone))
    assert site.get(f"/image/{fid}")[0] == 404


def test_every_text_is_escaped_and_nothing_comes_from_elsewhere(site: Site) -> None:
    night = site.file_id(site.files[-1])
    for path in ("/", f"/image/{night}", "/?q=" + urllib.request.quote(HOSTILE)):
        status, headers, body = site.get(path)
        page = body.decode()
        assert status == 200
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "https://" not in page and page.count("http://") == page.count("http://www.w3.org/2000/svg")
    page = site.get(f"/image/{night}")[2].decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_image_page_shows_results_overlay_and_what_was_written(site: Site) -> None:
    fid = site.file_id(site.files[1])
    page = site.get(f"/image/{fid}")[2].decode()
    assert 'data-layer="objects"' in page and 'data-layer="text"' in page
    assert page.count("<polygon") == 2  # one object, one text region (the fake model's)
    assert "In the file's metadata" in page and "XMP-iptcCore:AltTextAccessibility" in page
    assert str(site.files[1]) in page


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "sudo apt-get install chromium chromium-driver (make test installs them as root)")
    return browser, driver


def test_in_a_real_browser_search_open_and_toggle_the_overlay(site: Site, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
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
        wait.until(lambda d: d.execute_script("const i = document.getElementById('picture');"
                                              "return i.complete && i.naturalWidth > 0"))
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
    finally:
        driver.quit()


def test_serve_command_listens_on_loopback_and_answers(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    from daemon.testing.helpers import write_config
    from .test_cli import REPO

    cfg = write_config(tmp_path, tmp_path / "no-model")  # serving needs no model
    with cfg.open("a") as fh:
        fh.write(f'[serve]\nport = 0\nthumbnails = "{tmp_path / "thumbs"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "--config", str(cfg), "serve"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
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
    with pytest.raises(ConfigError, match="serve.port"):
        parse_config({"serve": {"port": 70000}})
