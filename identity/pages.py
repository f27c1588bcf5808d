"""HTML pages reached from links in emails: server-rendered, French first, no JavaScript.

The page's language is chosen per request (identity.i18n: ?lang=, then the browser's).
Every HTML response gets the browser protections of identity.headers (wsgi.py adds
them): the pages' styles are the one stylesheet `inline_styles` names, nothing else.
"""

from flask import Blueprint
from flask import Flask
from flask import render_template

from identity import i18n
from identity import landing
from identity import presentation
from identity.api.http import invite_policy
from identity.api.http import now
from identity.api.http import routing_table
from identity.api.http import settings

bp = Blueprint("pages", __name__, template_folder="../templates")


@bp.get(landing.LANDING_PATH + "/<token>")
def invitation(token: str):
    """The invitation's landing page: who invites, where, and how to get on board."""
    config = settings()
    context, status = presentation.landing_page(
        token,
        policy=invite_policy(),
        routing=routing_table(),
        max_age_seconds=config.invite_validity_seconds,
        now=now(),
    )
    page = render_template(
        "pages/invitation.html",
        other_languages=i18n.other_languages(),
        ios_app_url=config.ios_app_url,
        android_app_url=config.android_app_url,
        **context,
    )
    # The link carries the invitation's private key: kept out of caches (and out of
    # other sites' logs by every page's Referrer-Policy, identity.headers).
    return page, status, {"Cache-Control": "no-store"}


STYLESHEET = "pages/style.css"


def inline_styles(app: Flask) -> list[str]:
    """The text of each `<style>` element the pages hold (base.html includes it).

    Rendered as the include renders it, so that its hash is the one the browser computes.
    """
    return [app.jinja_env.get_template(STYLESHEET).render()]
