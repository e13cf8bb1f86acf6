"""A run report opened in a real browser: Debian's headless Chromium, driven through Selenium.

Selenium is handed the browser and the driver binaries, so that Selenium Manager never looks for them on the
network. Either one missing skips the test on a developer machine and fails it in CI (``tests.servers.missing``).

Use::

    with chrome() as driver:
        charts = chart_boxes(driver, report_path)
        assert network_requests(driver) == []
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.servers import find_binary

WIDTH = 1100

# For each svg.chart: its class and label, its rendered box, the shapes drawn in it (bars: class "bar"), the
# fill colours of its bars as the browser computed them, and its text boxes that stick out of it (clipped).
_CHARTS = """
return Array.from(document.querySelectorAll('svg.chart')).map(svg => {
  const box = svg.getBoundingClientRect();
  const bars = Array.from(svg.querySelectorAll('.bar'));
  const clipped = Array.from(svg.querySelectorAll('text')).filter(t => {
    const r = t.getBoundingClientRect();
    return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5;
  }).map(t => t.textContent);
  return {
    class: svg.getAttribute('class'), label: svg.getAttribute('aria-label'),
    width: box.width, height: box.height,
    shapes: svg.querySelectorAll('rect, path, polygon').length, bars: bars.length,
    fills: Array.from(new Set(bars.map(b => getComputedStyle(b).fill))).sort(), clipped: clipped,
  };
});
"""


@contextmanager
def chrome(width: int = WIDTH, height: int = 900) -> Iterator[WebDriver]:
    """A headless Chromium with a ``width`` x ``height`` window, quit on exit."""
    browser = find_binary("chromium", "apt-get install chromium", ("/usr/bin/chromium", "/usr/bin/chromium-browser"))
    driver_binary = find_binary(
        "chromedriver", "apt-get install chromium-driver", ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def chart_boxes(driver: WebDriver, path: Path) -> list[dict[str, Any]]:
    """Load ``path`` (file://) and describe every ``svg.chart`` on it as rendered (see ``_CHARTS``)."""
    driver.get(path.resolve().as_uri())
    charts: list[dict[str, Any]] = driver.execute_script(_CHARTS)
    return charts


def network_requests(driver: WebDriver) -> list[str]:
    """What the loaded page fetched beyond itself (images, styles, fonts, scripts): [] for a self-contained one."""
    names: list[str] = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    return names


def full_page_screenshot(driver: WebDriver, path: Path, width: int = WIDTH) -> Path:
    """The whole loaded page as one PNG: the window made as tall as the page first."""
    height, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];"
    )
    driver.set_window_size(width, int(height) + int(frame))  # the window's frame is not page
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
