"""Real-browser accessibility harness: headless Debian Chromium driven by Playwright, plus axe-core.

A pytest plugin (tests/conftest.py loads it), so that the session's one browser is
shared by every test module: take `browser` as a test argument, and import the helpers
(`axe_violations`, `save_screenshot`, …) from here.

Chromium is Debian's (/usr/bin/chromium, installed by scripts/test), so Playwright never
downloads a browser of its own. axe-core is the `axe.min.js` bundled in the
`axe-playwright-python` wheel (a dev dependency); it is read from that installed package.
"""

import contextlib
import os
import re
import threading
from collections.abc import Callable
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser
from playwright.sync_api import Page
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from app import create_app
from identity.extensions import db
from testing.processes import free_port

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_DIR = REPO_ROOT / "artifacts" / "screenshots"

AXE_PACKAGE = "axe_playwright_python"
AXE_FILE = "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

_axe_source: str | None = None


def axe_source() -> str:
    """The axe-core script shipped inside the installed axe-playwright-python package."""
    global _axe_source
    if _axe_source is None:
        _axe_source = resources.files(AXE_PACKAGE).joinpath(AXE_FILE).read_text(encoding="utf-8")
    return _axe_source


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Debian Chromium for the whole session."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def axe_violations(page: Page) -> list[dict]:
    """Run axe-core's WCAG 2.0/2.1 A and AA rules on the page; return its violations.

    The script is evaluated through the DevTools protocol rather than added as a <script> tag,
    so a page's Content-Security-Policy cannot block it.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    return page.evaluate(
        """async (tags) => {
            const results = await axe.run(document, {
                runOnly: {type: "tag", values: tags},
                resultTypes: ["violations"],
            });
            return results.violations;
        }""",
        WCAG_TAGS,
    )


# Installed before any of the page's own content runs (the DevTools protocol, which the
# page's policy does not govern): every Content-Security-Policy violation the page reports.
_CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
    window.__cspViolations.push(
        `${e.effectiveDirective} refused ${e.blockedURI || "inline"}: ${e.sample}`);
});
"""


def watch_csp_violations(page: Page) -> None:
    """Record the page's Content-Security-Policy violations from its next navigation on."""
    page.add_init_script(_CSP_WATCH)


def csp_violations(page: Page) -> list[str]:
    """The violations recorded since `watch_csp_violations`, one line each."""
    return page.evaluate("window.__cspViolations")


def format_violations(violations: list[dict]) -> str:
    """A readable list of axe violations, for assertion messages."""
    if not violations:
        return "no accessibility violations"
    lines = [f"{len(violations)} accessibility violation(s):"]
    for violation in violations:
        lines.append(
            f"- {violation.get('id')} [{violation.get('impact')}]: {violation.get('help')}"
        )
        for node in violation.get("nodes", []):
            target = node.get("target") or []
            lines.append("    at " + ", ".join(str(selector) for selector in target))
    return "\n".join(lines)


def save_screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG as artifacts/screenshots/<name>.png and return its path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "screenshot"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.contextmanager
def serve_app(
    tmp_path: Path, smtp, clock, *, routes: Callable[[Flask], object] | None = None
) -> Iterator[tuple[Flask, str]]:
    """The service on a real HTTP port, as a browser needs, its mails going to `smtp`.

    :param routes: adds test-only routes to the app before it serves.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'identity.sqlite3'}",
            "SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
            "INSTANCE_PATH": str(tmp_path),
            "MAIL_SERVER": smtp.host,
            "MAIL_PORT": smtp.port,
            "MAIL_SUPPRESS_SEND": False,
            "PUBLIC_BASE_URL": base,
            "DELIVERY_WORKER_ENABLED": False,
            "RATELIMIT_ENABLED": False,
        },
        clock=clock,
    )
    if routes is not None:
        routes(app)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, base
    finally:
        server.shutdown()
        with app.app_context():
            db.engine.dispose()
