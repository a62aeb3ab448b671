"""The web tests' browser: Debian's Chromium, headless, driven by Selenium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: "
            "sudo apt-get install chromium chromium-driver (make test installs them as root)"
        )
    return browser, driver


@pytest.fixture
def chrome() -> Iterator[WebDriver]:
    """Debian's chromium, headless, driven by Selenium; quit when the test ends."""
    from selenium import webdriver

    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
