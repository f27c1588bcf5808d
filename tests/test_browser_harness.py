"""The browser harness works, and can fail: axe finds the faults of a broken page."""

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from testing.processes import free_port
from tests.browser import DESKTOP
from tests.browser import PHONE
from tests.browser import axe_violations
from tests.browser import format_violations
from tests.browser import save_screenshot

ACCESSIBLE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Accessible page</title>
</head>
<body style="background: #ffffff; color: #1a1a1a; font-family: sans-serif;">
  <main>
    <h1>Welcome</h1>
    <p>This page has a language, a title, a heading and dark text on a white background.</p>
  </main>
</body>
</html>
"""

BROKEN = """<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Broken page</title>
</head>
<body style="background: #ffffff; font-family: sans-serif;">
  <main>
    <h1>Broken</h1>
    <img src="pixel.png" width="40" height="40">
    <p style="color: #dddddd;">Pale grey text on white is too faint to read.</p>
  </main>
</body>
</html>
"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the two pages from a throwaway folder on 127.0.0.1; yield the base URL."""
    root: Path = tmp_path_factory.mktemp("site")
    (root / "accessible.html").write_text(ACCESSIBLE, encoding="utf-8")
    (root / "broken.html").write_text(BROKEN, encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _check(browser: Browser, url: str, name: str) -> list[dict]:
    """Screenshot the page at phone and desktop widths; return axe's violations at each."""
    found = []
    for label, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        context = browser.new_context(viewport=viewport)
        try:
            page = context.new_page()
            response = page.goto(url)
            assert response is not None and response.ok, url
            save_screenshot(page, f"harness-{name}-{label}")
            found.append(axe_violations(page))
        finally:
            context.close()
    return found


@pytest.mark.browser
def test_accessible_page_has_no_violations(browser, static_site):
    for violations in _check(browser, f"{static_site}/accessible.html", "accessible"):
        assert violations == [], format_violations(violations)


@pytest.mark.browser
def test_broken_page_has_violations(browser, static_site):
    for violations in _check(browser, f"{static_site}/broken.html", "broken"):
        ids = {violation["id"] for violation in violations}
        assert {"image-alt", "html-has-lang", "color-contrast"} <= ids, format_violations(
            violations
        )
        message = format_violations(violations)
        assert "image-alt [critical]" in message
        assert "img" in message
