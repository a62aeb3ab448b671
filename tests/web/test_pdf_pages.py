"""A PDF on the web page: a hit names its page, the page is drawn with its own regions, the pager moves.

A real HTTP server over a real index, and Debian's Chromium for what a person sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from daemon.index import records
from daemon.testing.documents import write_scan
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config
from tests.web.test_serve import Site

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def site(tmp_path: Path, open_test_pipeline: PipelineFactory) -> Iterator[Site]:
    config = make_config(tmp_path, metadata={"write": False}, serve={"thumbnails": str(tmp_path / "thumbs")})
    (tmp_path / "inbox").mkdir()
    scan = write_scan(tmp_path / "inbox" / "statement.pdf", pages=3)
    pipeline = open_test_pipeline(config, FakeAnalyzer())
    pipeline.offer([scan])
    pipeline.drain()
    s = Site(config, pipeline.db, [scan])
    yield s
    s.server.shutdown()
    s.server.server_close()
    s.thread.join(timeout=10)


def _words(site: Site) -> list[str]:
    """Each page's first word as the model read it."""
    with site.db.transaction() as s:
        info = records.file_info(s, str(site.files[0]))
    assert info is not None
    return [p["ocr"].split()[0] for p in info["pages"]]


def test_each_page_is_served_drawn_and_a_page_it_lacks_is_not(site: Site) -> None:
    file_id = site.file_id(site.files[0])
    drawn = []
    for page in (1, 2, 3):
        status, headers, body = site.get(f"/view/{file_id}?page={page}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        drawn.append(Image.open(BytesIO(body)).convert("RGB").resize((1, 1)).getpixel((0, 0)))
    assert len(set(drawn)) == 3  # three pages, three tints: not page 1 three times
    for bad in ("4", "0", "two", "9" * 20):
        assert site.get(f"/image/{file_id}?page={bad}")[0] == 404
    status, _, body = site.get(f"/image/{file_id}?page=2")
    assert status == 200 and b"Page 2 of 3" in body and f"/view/{file_id}?page=2".encode() in body


def test_in_a_real_browser_a_word_of_page_two_opens_page_two(site: Site, chrome: WebDriver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    word = _words(site)[1]
    wait = WebDriverWait(chrome, 20)
    chrome.get(site.url)
    chrome.find_element(By.ID, "q").send_keys(f"text:{word}", Keys.ENTER)
    wait.until(lambda d: word in d.current_url)
    [card] = chrome.find_elements(By.CSS_SELECTOR, "a.card")
    assert card.find_element(By.CLASS_NAME, "path").text == "statement.pdf, page 2"
    card.click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "nav.pages"))
    assert chrome.find_element(By.CSS_SELECTOR, "nav.pages").text.startswith("Page 2 of 3")
    wait.until(
        lambda d: d.execute_script(
            "const i = document.getElementById('picture');return i.complete && i.naturalWidth > 0"
        )
    )
    picture = chrome.find_element(By.ID, "picture")
    assert abs(picture.rect["width"] / picture.rect["height"] - 1654 / 2339) < 0.02  # the page's shape
    assert chrome.find_element(By.CSS_SELECTOR, 'g.layer[data-layer="text"] polygon').is_displayed()
    assert word in chrome.find_element(By.CSS_SELECTOR, "table.facts").text  # the page's own text
    chrome.find_element(By.LINK_TEXT, "3").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "nav.pages").text.startswith("Page 3 of 3"))
