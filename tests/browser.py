"""Open an HTML report in a real headless browser (Debian's `chromium`, driven by playwright) and say what it drew and what went wrong.

Nothing leaves the machine: every request that is not `file:`, `data:` or `blob:` is blocked and recorded, so a report that needs
the internet (a CDN script, a web font) is caught instead of passing on a connected laptop and failing in CI.
"""

import logging
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

# What Evidently 0.7 draws: the inline histograms of a drift table are <canvas> elements, the detail plots are plotly figures.
CHARTS = ".js-plotly-plot, canvas"
# Evidently 0.7's row expanders: a drift table's plotly figures are only drawn once a row is opened.
EVIDENTLY_DETAILS = 'button[aria-label="Detail panel visibility toggle"]'
# Debian's `/usr/bin/chromium` is a shell launcher; the browser itself lives here.
DEBIAN_CHROMIUM = "/usr/lib/chromium/chromium"
INSTALL_HINT = "sudo apt-get install -y chromium  (Debian/Ubuntu)"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# Counts the elements that show something: a canvas with a painted pixel, a plotly figure with its SVG, any other element that
# has a size and holds (or is) an SVG shape. A WebGL canvas made without `preserveDrawingBuffer` reads back blank: not counted.
_COUNT_DRAWN = """sel => [...document.querySelectorAll(sel)].filter(el => {
    const box = el.getBoundingClientRect();
    if (!(box.width > 0 && box.height > 0)) return false;
    if (el.tagName === 'CANVAS') {  // copied onto a probe canvas: never touch the page's own context (or create one)
        if (!el.width || !el.height) return false;
        try {
            const probe = Object.assign(document.createElement('canvas'), {width: el.width, height: el.height});
            const ctx = probe.getContext('2d', {willReadFrequently: true});
            ctx.drawImage(el, 0, 0);
            const px = ctx.getImageData(0, 0, el.width, el.height).data;
            for (let i = 3; i < px.length; i += 4) if (px[i]) return true;
            return false;
        } catch (e) { return true; }  // a tainted canvas cannot be read back: it has a size, count it
    }
    if (el.classList.contains('js-plotly-plot')) return el.querySelector('.main-svg') !== null;
    const shapes = 'path, rect, circle, ellipse, line, polyline, polygon, text, image';
    return el.matches(shapes) || el.querySelector(shapes) !== null;
}).length"""


@dataclass
class PageCheck:
    "What a headless browser saw while opening one page."

    console_errors: list = field(default_factory=list)  # `console.error` messages (and the browser's own, e.g. a failed load)
    page_errors: list = field(default_factory=list)  # uncaught exceptions thrown by the page's scripts
    failed_requests: list = field(default_factory=list)  # URLs blocked (not local) or that failed to load
    chart_count: int = 0  # elements matching the chart selector that were actually drawn
    title: str = ""  # the page's <title>
    seconds: float = 0.0  # from launching the browser to the last check

    @property
    def ok(self) -> bool:
        "No console error, no uncaught exception and no failed request."
        return not (self.console_errors or self.page_errors or self.failed_requests)


def find_chromium() -> str | None:
    "The path of Debian's chromium browser binary, or None when it is not installed."
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _apt_get(*args, timeout: float) -> subprocess.CompletedProcess:
    "Run apt-get non-interactively, waiting for a running apt/dpkg to release its lock instead of failing on it."
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", f"DPkg::Lock::Timeout={int(timeout)}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 600)


def install_chromium(
    lock_timeout: float = 900,  # seconds to wait for another apt-get/dpkg to finish
) -> str | None:
    "Install Debian's `chromium` with apt-get (root only); the binary's path, or None when apt-get could not."
    log.warning("chromium is missing: installing it with apt-get (may wait for a running apt-get)")
    r = _apt_get("install", "-y", "-q", "chromium", timeout=lock_timeout)
    if r.returncode != 0 and "Unable to locate package" in r.stderr + r.stdout:
        _apt_get("update", "-q", timeout=lock_timeout)
        r = _apt_get("install", "-y", "-q", "chromium", timeout=lock_timeout)
    if r.returncode != 0:
        log.warning("apt-get install chromium failed (exit %s): %s", r.returncode, r.stderr.strip()[-2000:])
    return find_chromium()


def chromium_path() -> str:
    "Debian's chromium, installed with apt-get when missing and we are root; otherwise skip the test, saying how to get it."
    if path := find_chromium():
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"no chromium browser ({DEBIAN_CHROMIUM} or `chromium` on PATH): install it with `{INSTALL_HINT}`")
    if path := install_chromium():
        return path
    pytest.skip(f"no chromium browser and `apt-get install -y chromium` failed (see the log): install it with `{INSTALL_HINT}`")


def _sync_playwright():
    "playwright's sync API, or skip the test naming the package to install."
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install playwright` (the browser comes from Debian, no `playwright install`)")
    return sync_playwright


@contextmanager
def headless_chromium(chromium: str | None = None):
    "Debian's chromium launched headless by playwright, closed on the way out (skips the test, naming what to install, if missing)."
    sync_playwright, chromium = _sync_playwright(), chromium or chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _ms_left(deadline: float) -> float:
    "Milliseconds until `deadline` (at least 1: playwright reads 0 as no limit)."
    return max((deadline - time.monotonic()) * 1000, 1)


def _settle(page, selector: str, min_charts: int, deadline: float, quiet: float = 0.5) -> int:
    "Wait for `min_charts` drawn charts, then until their count stays the same for `quiet` seconds; the last count."
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    count = page.evaluate(_COUNT_DRAWN, selector)
    if count < min_charts:
        try:
            page.wait_for_function(f"sel => ({_COUNT_DRAWN})(sel) >= {min_charts}", arg=selector, timeout=_ms_left(deadline))
        except PlaywrightTimeout:
            log.info("fewer than %d charts drawn before the deadline", min_charts)
    count, stable_since = page.evaluate(_COUNT_DRAWN, selector), time.monotonic()
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        if (now := page.evaluate(_COUNT_DRAWN, selector)) != count:
            count, stable_since = now, time.monotonic()
    return count


def open_report(
    html_path,  # the HTML file to open (opened as a file:// URL)
    chart_selector: str = CHARTS,  # CSS selector of the charts to count; only those actually drawn are counted
    expand: str | None = None,  # CSS selector of elements to click before counting (e.g. `EVIDENTLY_DETAILS`)
    min_charts: int = 1,  # wait until at least this many charts are drawn (or `timeout` passes)
    timeout: float = 30,  # seconds allowed for loading and drawing
    chromium: str | None = None,  # the browser binary; default `chromium_path()` (installs or skips)
) -> PageCheck:
    "Open `html_path` in headless chromium with the network blocked; what it drew and every error it logged."
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML report at {html_path}")
    check, start = PageCheck(), time.monotonic()
    deadline = start + timeout

    def route(route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            return route.continue_()
        check.failed_requests.append(route.request.url)
        route.abort("blockedbyclient")

    def websocket(ws):
        check.failed_requests.append(ws.url)
        ws.close()

    def console(message):
        if message.type == "error":
            check.console_errors.append(f"{message.text} [{message.location.get('url', '')}]")

    def request_failed(request):
        if request.url not in check.failed_requests:
            check.failed_requests.append(request.url)

    with headless_chromium(chromium) as browser:
        context = browser.new_context(service_workers="block")
        context.route("**/*", route)
        context.route_web_socket("**/*", websocket)
        page = context.new_page()
        page.on("console", console)
        page.on("pageerror", lambda e: check.page_errors.append(f"{e.name}: {e.message}"))
        page.on("requestfailed", request_failed)
        page.goto(html_path.as_uri(), wait_until="load", timeout=timeout * 1000)
        check.chart_count = _settle(page, chart_selector, min_charts, deadline)
        if expand and (handles := page.query_selector_all(expand)):
            for handle in handles:
                handle.click(timeout=_ms_left(deadline))
            check.chart_count = _settle(page, chart_selector, check.chart_count + 1, deadline)
        check.title = page.title()
    check.seconds = time.monotonic() - start
    log.info("opened %s in %.1f s: %d charts, %s", html_path.name, check.seconds, check.chart_count, "ok" if check.ok else check)
    return check
