"""Browser tests of the published book: the built site as a reader meets it.

``make test-browser`` builds the book, then runs these tests: a session fixture
serves ``_build/html`` on 127.0.0.1 (a free port) and drives Debian's headless
Chromium through Selenium. ``make test-unit`` leaves this folder out.

Pages are discovered, not listed: every file of ``_toc.yml`` plus every HTML
page the build wrote. Each page is loaded once; what the tests need from it
(console messages, links, images, math) is read in that one visit and cached.

Chromium never reaches the internet here: host names other than the local
server do not resolve, so a formula that typesets proves the vendored MathJax
works, and the external Colab badge is checked by its address, not loaded.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from urllib.parse import urldefrag

import pytest

from book_site import CHROMIUM_FLAGS, PAGE_REPORT_JS, SITE, PageReport

# Selenium must not fetch a browser or a driver of its own (no internet here, nor in CI).
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output about the tests
        pass


@pytest.fixture(scope="session")
def base_url() -> str:
    """Serve the built site on 127.0.0.1 with a free port for the whole session."""
    if not (SITE / "index.html").is_file():
        pytest.skip(f"no built book at {SITE}: run `make test-browser` (it builds the book first)")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def driver(base_url: str):
    """Headless Debian Chromium with a fresh profile, driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not binary or not chromedriver:
        pytest.fail("chromium and chromedriver are missing: `make browser-deps` installs them")
    profile = tempfile.mkdtemp(prefix="esa-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    browser.set_page_load_timeout(60)
    browser.set_script_timeout(30)
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def visit(driver, base_url: str):
    """``visit(path) -> PageReport``: load a page once per session and read it."""
    cache: dict[str, PageReport] = {}

    def _visit(path: str) -> PageReport:
        if path not in cache:
            if not (SITE / path).is_file():
                pytest.skip(f"{path} was not built (test_toc_document_is_built reports it)")
            driver.get_log("browser")  # drop messages left by the previous page
            driver.get(base_url + path)
            data = driver.execute_async_script(PAGE_REPORT_JS)
            cache[path] = PageReport(path, data, driver.get_log("browser"))
        return cache[path]

    return _visit


@pytest.fixture(scope="session")
def http_get(base_url: str):
    """``http_get(url) -> bytes | None`` for the local server (None on an HTTP error); cached."""
    cache: dict[str, bytes | None] = {}

    def _get(url: str) -> bytes | None:
        url = urldefrag(url).url
        if url not in cache:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    cache[url] = response.read()
            except urllib.error.HTTPError:
                cache[url] = None
        return cache[url]

    return _get


