"""The pages' protections as a real headless Chromium applies them: the validation pages
render whole under their policy (axe-core still finds nothing), no other site can frame
the landing page, and a value a template forgot to escape runs no script.

The headers themselves are tests/test_browser_headers.py; the landing page's states
under the same checks are tests/test_landing_browser.py."""

import html
import re
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs
from urllib.parse import urlencode
from urllib.parse import urlsplit

import pytest
from flask import render_template_string

from tests.browser import DESKTOP
from tests.browser import PHONE
from tests.browser import axe_violations
from tests.browser import csp_violations
from tests.browser import format_violations
from tests.browser import save_screenshot
from tests.browser import serve_app
from tests.browser import watch_csp_violations
from tests.helpers import invite_guest
from tests.helpers import request_code

pytestmark = pytest.mark.browser

UNESCAPED_PATH = "/_matrix/identity/test-only/unescaped"
# What a template slip would let through, in each form a browser runs or applies.
INJECTED = """
<script>window.injected = "inline script";</script>
<script src="/_matrix/identity/versions"></script>
<img src="/nowhere.png" alt="" onerror="window.injected = 'event handler'">
<svg><animate onbegin="window.injected = 'svg handler'" attributeName="x" dur="1s"/></svg>
<style>body { background: rgb(255, 0, 0) !important; }</style>
<p id="styled" style="color: rgb(255, 0, 0) !important;">Injected</p>
"""
UNESCAPED_PAGE = """{% extends "pages/base.html" %}
{% block content %}<section><h1>Test</h1>{{ injected|safe }}</section>{% endblock %}"""


@pytest.fixture
def site(tmp_path, smtp, clock):
    """The service on a real HTTP port, plus a test-only page that forgets to escape."""

    def add_unescaped_page(app):
        @app.get(UNESCAPED_PATH)
        def unescaped():
            return render_template_string(UNESCAPED_PAGE, injected=INJECTED, lang="fr")

    with serve_app(tmp_path, smtp, clock, routes=add_unescaped_page) as served:
        yield served


def landing_url(site, smtp) -> str:
    app, _ = site
    return invite_guest(app.test_client(), smtp)


@pytest.mark.parametrize("outcome", ["confirmed", "wrong-code"])
def test_validation_pages_render_whole_under_their_policy(browser, site, smtp, outcome):
    app, base = site
    assert request_code(app.test_client(), "marie.dupont@ac-versailles.fr").status_code == 200
    # The mail's link, on this plain-http test server.
    link = re.search(r"(http://\S+submitToken\?\S+)", smtp.last().text()).group(1)
    if outcome == "wrong-code":
        link = link.replace("token=", "token=WRONG")
    for width, viewport in {"phone": PHONE, "desktop": DESKTOP}.items():
        page = browser.new_page(viewport=viewport, locale="fr-FR")
        watch_csp_violations(page)
        try:
            response = page.goto(link)
            assert response.status == (200 if outcome == "confirmed" else 400)
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert csp_violations(page) == []
            # The stylesheet applied: the header's blue rule, not the browser's default.
            border = page.evaluate(
                "getComputedStyle(document.querySelector('header')).borderBottomColor"
            )
            assert border == "rgb(0, 0, 145)"
            violations = axe_violations(page)
            save_screenshot(page, f"validation-{outcome}-{width}")
            assert violations == [], format_violations(violations)
        finally:
            page.close()


@pytest.fixture
def framer():
    """Another site: an unprotected page on another local origin that frames `?src=`.

    Local, as the service is: Chromium refuses a public site's frame of a loopback
    address by itself (Local Network Access), which would hide what the headers do.
    """

    class Framer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            src = html.escape(parse_qs(urlsplit(self.path).query)["src"][0])
            body = f'<!DOCTYPE html><title>Framer</title><iframe src="{src}" title="x"></iframe>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Framer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # "localhost", not 127.0.0.1: another host and another port, another origin.
    yield f"http://localhost:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_another_site_cannot_frame_the_landing_page(browser, site, smtp, framer):
    url = landing_url(site, smtp)
    page = browser.new_page(viewport=DESKTOP)
    console = []
    page.on("console", lambda message: console.append(message.text))
    try:
        # The landing page is served to the frame…
        with page.expect_response(lambda response: response.url == url) as served:
            page.goto(framer + "?" + urlencode({"src": url}))
        assert served.value.status == 200
        page.wait_for_load_state("load")
        save_screenshot(page, "landing-framed-by-another-site")
        # …and the browser refuses to show it there.
        (frame,) = [frame for frame in page.frames if frame != page.main_frame]
        assert frame.url != url
        assert "Marie Dupont" not in frame.evaluate("document.documentElement.innerText")
        assert any("frame-ancestors 'none'" in line for line in console), console
    finally:
        page.close()


def test_an_unescaped_value_runs_no_script(browser, site):
    _, base = site
    page = browser.new_page(viewport=DESKTOP)
    watch_csp_violations(page)
    try:
        assert page.goto(base + UNESCAPED_PATH).status == 200
        page.wait_for_timeout(1500)  # the SVG animation's begin, the image's error
        assert page.locator("#styled").count() == 1  # the injection did reach the page
        assert page.evaluate("window.injected") is None
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
        assert page.evaluate("getComputedStyle(document.querySelector('#styled')).color") != (
            "rgb(255, 0, 0)"
        )
        refused = " ".join(csp_violations(page))
        for directive in ("script-src-elem", "script-src-attr", "style-src-elem", "img-src"):
            assert directive in refused, refused
        save_screenshot(page, "unescaped-value-refused")
    finally:
        page.close()
