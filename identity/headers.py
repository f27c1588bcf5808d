"""The headers a browser is told to enforce, by kind of response.

HTML pages (the landing and validation pages, their error versions, any page to come)
are sent with a policy their own markup satisfies: no script at all, their one inline
stylesheet by its hash, forms to this origin only, never framed. The JSON API carries
the CORS headers the identity specification recommends (section "Web browser
clients"), and only it. Every response carries `nosniff`, and HSTS when the public URL
is https. `identity.wsgi.ResponseEnvelope` picks the set by the response's type, so
no view declares any of them (docs/operations.md lists them).
"""

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

Header = tuple[str, str]

# The CORS headers the identity specification recommends (section "Web browser clients").
CORS_HEADERS: tuple[Header, ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Origin, X-Requested-With, Content-Type, Accept, Authorization",
    ),
)

NOSNIFF: Header = ("X-Content-Type-Options", "nosniff")

# Powerful features no page uses: refused to the page and to anything it could embed.
UNUSED_FEATURES = (
    "accelerometer",
    "autoplay",
    "camera",
    "display-capture",
    "encrypted-media",
    "fullscreen",
    "geolocation",
    "gyroscope",
    "hid",
    "idle-detection",
    "magnetometer",
    "microphone",
    "midi",
    "payment",
    "picture-in-picture",
    "publickey-credentials-get",
    "screen-wake-lock",
    "serial",
    "usb",
    "xr-spatial-tracking",
)


@dataclass(frozen=True)
class ResponseHeaders:
    """The headers added to each kind of response."""

    every: tuple[Header, ...]
    api: tuple[Header, ...]
    page: tuple[Header, ...]


def response_headers(
    *, public_base_url: str, hsts_max_age_seconds: int, page_styles: Iterable[str]
) -> ResponseHeaders:
    """The header sets for a service reached at `public_base_url`.

    :param hsts_max_age_seconds: HSTS lifetime; 0, or an http public URL, sends none.
    :param page_styles: the exact text of each inline `<style>` element the pages use.
    """
    every = [NOSNIFF]
    if public_base_url.startswith("https://") and hsts_max_age_seconds > 0:
        every.append(("Strict-Transport-Security", f"max-age={hsts_max_age_seconds}"))
    page = (
        ("Content-Security-Policy", content_security_policy(page_styles)),
        # frame-ancestors is the rule; X-Frame-Options for browsers that predate it.
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        # Page links carry secrets (a landing link its key, a mail link its code).
        ("Referrer-Policy", "no-referrer"),
        ("Permissions-Policy", ", ".join(f"{feature}=()" for feature in UNUSED_FEATURES)),
    )
    return ResponseHeaders(every=tuple(every), api=CORS_HEADERS, page=page)


def content_security_policy(page_styles: Iterable[str]) -> str:
    """A policy for pages that run no script, show no image and embed nothing.

    Only the listed inline stylesheets apply, by hash: an injected `<style>` or `style`
    attribute does not, and neither does an injected script, whatever its form.
    """
    styles = " ".join(sorted({style_source(css) for css in page_styles})) or "'none'"
    return "; ".join(
        (
            "default-src 'none'",
            f"style-src {styles}",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )


def style_source(css: str) -> str:
    """The CSP source naming one inline stylesheet by its SHA-256 (CSP3 "hash-source")."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"
