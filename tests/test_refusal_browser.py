"""The guest's refusal and report pages in a real headless Chromium: accessibility
(axe-core, WCAG 2.1 AA), nothing their Content-Security-Policy refuses, forms that work
without JavaScript, in French and English, at phone and desktop widths. Screenshots go
to artifacts/screenshots/."""

import re

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

pytestmark = pytest.mark.browser

WIDTHS = {"phone": PHONE, "desktop": DESKTOP}
HEADINGS = {
    ("refuse", "fr"): "Ne plus recevoir d'invitations",
    ("refuse", "en"): "Stop receiving invitations",
    ("report", "fr"): "Vous ne connaissez pas Marie Dupont",
    ("report", "en"): "You do not know Marie Dupont",
}
DONE = {
    ("refuse", "fr"): "C'est noté",
    ("refuse", "en"): "Done:",
    ("report", "fr"): "Merci, votre signalement est enregistré",
    ("report", "en"): "Thank you, your report is recorded",
}


@pytest.fixture
def site(tmp_path, smtp, clock):
    with serve_app(tmp_path, smtp, clock) as served:
        yield served


def guest_links(site, smtp) -> dict[str, str]:
    """The refusal (List-Unsubscribe) and report links of the invitation mail."""
    app, _ = site
    invite_guest(app.test_client(), smtp, room_name="Projet X : coordination")
    mail = smtp.last()
    refuse = str(mail.message["List-Unsubscribe"]).strip("<>")
    report = re.search(r"(http://\S+/guest/report/[^\s?]+)", mail.text()).group(1)
    return {"refuse": refuse, "report": report}


def check(page, name: str) -> None:
    assert csp_violations(page) == []
    violations = axe_violations(page)
    save_screenshot(page, name)
    assert violations == [], format_violations(violations)
    assert not page.evaluate("document.documentElement.scrollWidth > window.innerWidth")


@pytest.mark.parametrize("lang", ["fr", "en"])
@pytest.mark.parametrize("kind", ["refuse", "report"])
def test_the_page_and_its_form(browser, site, smtp, kind, lang):
    """The page (a GET: nothing recorded) at both widths, then its form submitted: the
    confirmation page, checked as well. The pages hold no script of their own: axe is
    injected by the test."""
    url = guest_links(site, smtp)[kind] + f"?lang={lang}"
    for width_name, viewport in WIDTHS.items():
        page = browser.new_page(viewport=viewport)
        watch_csp_violations(page)
        try:
            response = page.goto(url)
            assert response.status == 200
            assert "default-src 'none'" in response.headers["content-security-policy"]
            assert page.locator("h1").first.inner_text().startswith(HEADINGS[kind, lang])
            check(page, f"guest-{kind}-{lang}-{width_name}")
            if width_name == "desktop":
                with page.expect_navigation():
                    page.locator("form button").first.click()
                assert page.locator("h1").first.inner_text().startswith(DONE[kind, lang])
                check(page, f"guest-{kind}-{lang}-done")
        finally:
            page.close()


@pytest.mark.parametrize("kind", ["refuse", "report"])
def test_the_form_works_without_javascript(browser, site, smtp, kind):
    url = guest_links(site, smtp)[kind]
    context = browser.new_context(java_script_enabled=False, viewport=PHONE, locale="fr-FR")
    try:
        page = context.new_page()
        assert page.goto(url).status == 200
        with page.expect_navigation():
            page.locator("form button").first.click()
        assert page.locator("h1").first.inner_text().startswith(DONE[kind, "fr"])
    finally:
        context.close()


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_code_form_to_lift_a_refusal(browser, site, smtp, lang):
    refuse = guest_links(site, smtp)["refuse"] + f"?lang={lang}"
    page = browser.new_page(viewport=PHONE)
    watch_csp_violations(page)
    try:
        page.goto(refuse)
        with page.expect_navigation():
            page.locator("form button").first.click()
        with page.expect_navigation():
            page.locator("form[action*='undo'] button").click()
        assert page.locator("#code").is_visible()
        check(page, f"guest-lift-code-{lang}")
    finally:
        page.close()


def test_an_invalid_link(browser, site):
    _, base = site
    page = browser.new_page(viewport=PHONE, locale="fr-FR")
    watch_csp_violations(page)
    try:
        response = page.goto(f"{base}/_matrix/identity/guest/refuse/forged")
        assert response.status == 404
        assert page.locator("h1").inner_text() == "Ce lien n'est pas valable"
        check(page, "guest-invalid")
    finally:
        page.close()
