"""A real headless Chromium (Debian's `chromium` and `chromium-driver`, through selenium) for the
report tests: :func:`check_report_html` opens a report.html and checks what a reader would see."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"


def browser() -> Any:
    """A headless Chromium driver; skips (naming the install command) where none is installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(f"Chromium not installed; install it with `{INSTALL}` (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
                 "--window-size=1280,900"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(60)
    return drv


def check_report_html(html: Path, *, title: str, sections: dict[str, str], figures: int,
                      screenshot: Path) -> None:
    """Opens ``html`` in headless Chromium: the title, every figure decoded with alt text, the
    ``sections`` (h2 id -> heading) present, nothing wider than a 1280-px window, no severe
    console error; then a full-page screenshot to ``screenshot``."""
    drv = browser()
    try:
        drv.get(html.resolve().as_uri())
        assert drv.title == title
        imgs = drv.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(imgs) == figures, imgs
        assert all(done and width > 0 and alt for done, width, alt in imgs), imgs
        heads = dict(drv.execute_script(
            "return [...document.querySelectorAll('h2')].map(h => [h.id, h.textContent])"))
        assert {k: heads.get(k) for k in sections} == sections, heads
        # nothing wider than the window at a laptop's width (wide tables scroll in their box)
        width = drv.execute_script("return document.documentElement.scrollWidth")
        assert width <= drv.execute_script("return window.innerWidth"), width
        severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        height = drv.execute_script("return document.documentElement.scrollHeight")
        drv.set_window_size(1280, height + 200)  # the whole page in one screenshot
        assert drv.save_screenshot(str(screenshot))
        png = screenshot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
        assert int.from_bytes(png[20:24], "big") >= height  # PNG IHDR: the image's height
    finally:
        drv.quit()
