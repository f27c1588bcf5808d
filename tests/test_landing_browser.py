"""The landing page in a real headless Chromium: accessibility (axe-core, WCAG 2.1 AA),
nothing its Content-Security-Policy refuses, keyboard use and visible focus, without
JavaScript, at phone and desktop widths, in French and English, for each state of an
invitation. Screenshots go to artifacts/."""

from urllib.parse import quote
from urllib.parse import unquote

import pytest

from tests.browser import DESKTOP
from tests.browser import PHONE
from tests.browser import axe_violations
from tests.browser import csp_violations
from tests.browser import format_violations
from tests.browser import save_screenshot
from tests.browser import serve_app
from tests.browser import watch_csp_violations
from tests.helpers import invite_guest
from tests.helpers import web_client_link_from_page

pytestmark = pytest.mark.browser

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}


@pytest.fixture
def site(tmp_path, smtp, clock):
    """The service on a real HTTP port, its mails going to the SMTP sink."""
    with serve_app(tmp_path, smtp, clock) as served:
        yield served


def invite(site, smtp, address="claire.martin@partenaire.example", lang="fr") -> str:
    """Store an invitation through the API; return the landing link from the mail."""
    app, _ = site
    return invite_guest(
        app.test_client(), smtp, lang=lang, address=address, room_name="Projet X : coordination"
    )


def check_page(browser, url: str, name: str, *, status: int, heading: str) -> None:
    """Open `url` at each width: status, heading, nothing its Content-Security-Policy
    refuses, no axe violation; save screenshots."""
    for width_name, viewport in WIDTHS.items():
        page = browser.new_page(viewport=viewport, locale="fr-FR")
        watch_csp_violations(page)
        try:
            response = page.goto(url)
            assert response.status == status
            assert "default-src 'none'" in response.headers["content-security-policy"]
            assert page.locator("h1").inner_text().startswith(heading)
            assert csp_violations(page) == []
            violations = axe_violations(page)
            save_screenshot(page, f"landing-{name}-{width_name}")
            assert violations == [], format_violations(violations)
            # Nothing wider than the screen: no sideways scrolling on a phone.
            overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not overflow
        finally:
            page.close()


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_pending_invitation(browser, site, smtp, lang):
    url = invite(site, smtp, lang=lang)
    heading = "Marie Dupont vous invite" if lang == "fr" else "Marie Dupont invites you"
    check_page(browser, url, f"pending-{lang}", status=200, heading=heading)


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_expired_invitation(browser, site, smtp, clock, lang):
    url = invite(site, smtp, lang=lang)
    clock.advance(days=31)
    heading = "Cette invitation a expiré" if lang == "fr" else "This invitation has expired"
    check_page(browser, url, f"expired-{lang}", status=410, heading=heading)


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_revoked_invitation(browser, site, smtp, lang):
    app, _ = site
    url = invite(site, smtp, lang=lang)
    result = app.test_cli_runner().invoke(
        args=["invites", "revoke", "--address", "claire.martin@partenaire.example"]
    )
    assert "Revoked 1" in result.output
    heading = "Cette invitation a été annulée" if lang == "fr" else "This invitation has been"
    check_page(browser, url, f"revoked-{lang}", status=410, heading=heading)


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_accepted_invitation(browser, site, smtp, lang):
    """Someone signed in with the link: the page names the server of the account it admitted."""
    app, base = site
    url = invite(site, smtp, lang=lang)
    page = app.test_client().get(url.removeprefix(base))
    signurl = web_client_link_from_page(page.text).split("signurl=")[1].split("&")[0]
    sign = (
        unquote(signurl).removeprefix(base) + "&mxid=" + quote("@claire:matrix.partenaire.example")
    )
    assert app.test_client().post(sign).status_code == 200
    heading = (
        "Cette invitation a déjà été acceptée"
        if lang == "fr"
        else "This invitation has already been accepted"
    )
    check_page(browser, url, f"accepted-{lang}", status=409, heading=heading)


def test_invalid_link(browser, site):
    _, base = site
    check_page(
        browser, f"{base}/_matrix/identity/invitation/forged", "invalid", status=404,
        heading="Ce lien d'invitation n'est pas valable",
    )  # fmt: skip


def test_keyboard_reaches_the_button_with_a_visible_focus(browser, site, smtp):
    url = invite(site, smtp)
    page = browser.new_page(viewport=DESKTOP, locale="fr-FR")
    try:
        page.goto(url)
        for _ in range(10):
            page.keyboard.press("Tab")
            focused = page.evaluate("document.activeElement.textContent.trim()")
            if focused == "Ouvrir Tchap dans mon navigateur":
                break
        else:
            pytest.fail("Tab never reached the button to the web client")
        outline = page.evaluate(
            "(() => { const s = getComputedStyle(document.activeElement);"
            " return [s.outlineStyle, s.outlineWidth]; })()"
        )
        assert outline[0] != "none" and outline[1] != "0px", outline
        save_screenshot(page, "landing-keyboard-focus")
        # The link prefills the address; Enter follows it to the web client.
        href = page.evaluate("document.activeElement.href")
        assert "#/room/" in href and "email=claire.martin%40partenaire.example" in href
        with page.expect_request(lambda request: "www.tchap.gouv.fr" in request.url):
            page.keyboard.press("Enter")
    finally:
        page.close()


def test_works_without_javascript(browser, site, smtp):
    url = invite(site, smtp)
    context = browser.new_context(java_script_enabled=False, viewport=PHONE, locale="fr-FR")
    try:
        page = context.new_page()
        assert page.goto(url).status == 200
        button = page.get_by_role("link", name="Ouvrir Tchap dans mon navigateur")
        assert "signurl=" in button.get_attribute("href")
        save_screenshot(page, "landing-no-javascript-phone")
    finally:
        context.close()
