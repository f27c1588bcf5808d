"""The headers browsers are told to enforce: every HTML page gets a strict policy its
own markup satisfies and no CORS; the JSON API gets CORS; every response gets nosniff
(and HSTS on https); /.well-known/security.txt comes from the settings.

Whether Chromium really applies them is tests/test_page_protections_browser.py."""

import base64
import datetime
import hashlib
import re

import pytest
from flask import render_template_string

from app import create_app
from identity.config import ConfigError
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import invite_guest
from tests.helpers import link_from_mail
from tests.helpers import relative
from tests.helpers import request_code

ADDRESS = "marie.dupont@ac-versailles.fr"
CORS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
)
PAGE_ONLY = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "Cross-Origin-Opener-Policy",
    "Permissions-Policy",
    "Referrer-Policy",
)


def landing_link(client, smtp) -> str:
    return relative(invite_guest(client, smtp))


def validation_link(client, smtp) -> str:
    assert request_code(client, ADDRESS).status_code == 200
    return relative(link_from_mail(smtp.last()))


def pages(client, smtp, clock):
    """Each kind of HTML page a person can be shown, with its expected status."""
    landing = landing_link(client, smtp)
    validation = validation_link(client, smtp)
    yield "landing", client.get(landing), 200
    yield "landing, invalid link", client.get("/_matrix/identity/invitation/forged"), 404
    yield "validation, wrong code", client.get(validation.replace("token=", "token=X")), 400
    yield "validation, confirmed", client.get(validation), 200
    yield "validation, unknown session", client.get(validation.replace("sid=", "sid=X")), 400
    clock.advance(days=31)
    yield "landing, expired", client.get(landing), 410


def directives(policy: str) -> dict[str, str]:
    pairs = (part.strip().split(" ", 1) for part in policy.split(";"))
    return {name: value for name, value in pairs}


def assert_page_headers(response) -> None:
    for name in (*PAGE_ONLY, "X-Content-Type-Options", "Strict-Transport-Security"):
        # Exactly once: a second copy from a view would make browsers combine them.
        assert len(response.headers.getlist(name)) == 1, name
    for name in CORS:
        assert name not in response.headers, name
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    features = response.headers["Permissions-Policy"].split(", ")
    assert {"camera=()", "microphone=()", "geolocation=()", "payment=()"} <= set(features)
    assert all(feature.endswith("=()") for feature in features)
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy.keys() == {
        "default-src",
        "style-src",
        "form-action",
        "base-uri",
        "frame-ancestors",
    }
    assert policy["default-src"] == "'none'"
    assert policy["form-action"] == "'self'"
    assert policy["base-uri"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"


def assert_markup_fits_the_policy(page: str, policy: dict[str, str]) -> None:
    """The page's own markup needs nothing the policy refuses."""
    styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert policy["style-src"] == f"'sha256-{digest}'"
    for refused in ("<script", "<img", "<iframe", "<link", " style=", "<form", "<base"):
        assert refused not in page, refused


def test_every_page_gets_the_page_policy_and_no_cors(client, smtp, clock):
    seen = []
    for name, response, status in pages(client, smtp, clock):
        assert (name, response.status_code, response.mimetype) == (name, status, "text/html")
        assert_page_headers(response)
        policy = directives(response.headers["Content-Security-Policy"])
        assert_markup_fits_the_policy(response.get_data(as_text=True), policy)
        seen.append(name)
    assert len(seen) == 6


def test_the_landing_page_is_not_cached(client, smtp):
    r = client.get(landing_link(client, smtp))
    assert r.headers["Cache-Control"] == "no-store"


def test_a_page_added_later_is_protected_without_asking(app, client):
    """Any HTML response is a page: the protections do not depend on the view."""

    @app.get("/_matrix/identity/v2/a-new-page")
    def new_page():
        return render_template_string('{% extends "pages/base.html" %}')

    r = client.get("/_matrix/identity/v2/a-new-page")
    assert r.status_code == 200
    assert_page_headers(r)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/_matrix/identity/versions", 200),
        ("GET", f"{V2}", 200),
        ("GET", f"{V1}/pubkey/ed25519:0", 200),
        ("GET", f"{V2}/nope", 404),
        ("POST", "/_matrix/identity/versions", 405),
        ("POST", f"{V1}/validate/email/requestToken", 400),
        ("GET", f"{V2}/account", 401),
        ("GET", "/health", 200),
    ],
)
def test_json_answers_carry_cors_and_no_page_policy(client, method, path, status):
    r = client.open(path, method=method, json={} if method == "POST" else None)
    assert (r.status_code, r.mimetype) == (status, "application/json")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, DELETE, OPTIONS"
    assert r.headers["Access-Control-Allow-Headers"] == (
        "Origin, X-Requested-With, Content-Type, Accept, Authorization"
    )
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for name in PAGE_ONLY:
        assert name not in r.headers, name


@pytest.mark.parametrize(
    "path",
    [f"{V2}/validate/email/submitToken", f"{V1}/store-invite", "/_matrix/identity/invitation/x"],
)
def test_preflights_carry_cors(client, path):
    """The preflight of a POST beside a page (submitToken) included: it is no page."""
    r = client.options(path, headers={"Access-Control-Request-Method": "POST"})
    assert r.status_code == 200
    for name in CORS:
        assert name in r.headers
    assert "Content-Security-Policy" not in r.headers


def test_hsts_only_for_an_https_public_url_and_settable(make_app):
    for overrides, expected in [
        ({}, "max-age=31536000"),
        ({"HSTS_MAX_AGE_SECONDS": 600}, "max-age=600"),
        ({"HSTS_MAX_AGE_SECONDS": 0}, None),
        ({"PUBLIC_BASE_URL": "http://id.tchap.test"}, None),
    ]:
        client = make_app(**overrides).test_client()
        for path in (f"{V2}", "/_matrix/identity/invitation/forged"):
            r = client.get(path)
            assert r.headers.get("Strict-Transport-Security") == expected, (overrides, path)
            assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_other_answers_get_nosniff_and_no_cors(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Content-Security-Policy" not in r.headers


# -- /.well-known/security.txt --------------------------------------------------------


def test_security_txt_is_an_unknown_path_when_unset(client):
    r = client.get("/.well-known/security.txt")
    assert (r.status_code, r.json["errcode"]) == (404, "M_UNRECOGNIZED")


def test_security_txt_from_the_settings(make_app):
    app = make_app(
        SECURITY_TXT_CONTACT="mailto:securite@tchap.gouv.fr, https://tchap.gouv.fr/securite",
        SECURITY_TXT_EXPIRES="2027-06-30T12:00:00+02:00",
        SECURITY_TXT_POLICY="https://tchap.gouv.fr/divulgation",
    )
    r = app.test_client().get("/.well-known/security.txt")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.get_data(as_text=True) == (
        "Contact: mailto:securite@tchap.gouv.fr\n"
        "Contact: https://tchap.gouv.fr/securite\n"
        "Expires: 2027-06-30T10:00:00Z\n"
        "Policy: https://tchap.gouv.fr/divulgation\n"
        "Preferred-Languages: fr, en\n"
        "Canonical: https://id.tchap.test/.well-known/security.txt\n"
    )


def test_security_txt_accepts_a_toml_date_without_policy(make_app):
    app = make_app(
        SECURITY_TXT_CONTACT=["mailto:securite@tchap.gouv.fr"],
        SECURITY_TXT_EXPIRES=datetime.date(2027, 1, 31),
    )
    text = app.test_client().get("/.well-known/security.txt").get_data(as_text=True)
    assert "Expires: 2027-01-31T00:00:00Z\n" in text
    assert "Policy:" not in text


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"SECURITY_TXT_CONTACT": "mailto:s@tchap.gouv.fr"}, "SECURITY_TXT_EXPIRES"),
        ({"SECURITY_TXT_EXPIRES": "2027-01-01"}, "SECURITY_TXT_CONTACT"),
        ({"SECURITY_TXT_POLICY": "https://tchap.gouv.fr/p"}, "SECURITY_TXT_CONTACT"),
        (
            {
                "SECURITY_TXT_CONTACT": "securite@tchap.gouv.fr",
                "SECURITY_TXT_EXPIRES": "2027-01-01",
            },
            "SECURITY_TXT_CONTACT",
        ),
        (
            {"SECURITY_TXT_CONTACT": "mailto:s@tchap.gouv.fr", "SECURITY_TXT_EXPIRES": "soon"},
            "SECURITY_TXT_EXPIRES",
        ),
        (
            {
                "SECURITY_TXT_CONTACT": "mailto:s@tchap.gouv.fr",
                "SECURITY_TXT_EXPIRES": "2027-01-01",
                "SECURITY_TXT_POLICY": "http://tchap.gouv.fr/p",
            },
            "SECURITY_TXT_POLICY",
        ),
        ({"HSTS_MAX_AGE_SECONDS": "a year"}, "HSTS_MAX_AGE_SECONDS"),
    ],
)
def test_bad_browser_settings_stop_the_start(config, clock, overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        create_app({**config, **overrides}, clock=clock)
