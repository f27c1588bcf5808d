"""HTML pages reached from links in emails: server-rendered, French first, no JavaScript."""

from flask import Blueprint
from flask import render_template
from flask import request

from identity import invitations
from identity import landing
from identity import routing
from identity.api.http import now
from identity.api.http import settings
from identity.api.invitations import invite_policy

bp = Blueprint("pages", __name__, template_folder="../templates")

LANGUAGES = ("fr", "en")


def page_language() -> str:
    """`?lang=` when given, else the browser's preference, else French."""
    asked = request.args.get("lang", "")
    if asked in LANGUAGES:
        return asked
    return request.accept_languages.best_match(LANGUAGES, default="fr") or "fr"


@bp.get(invitations.LANDING_PATH + "/<token>")
def invitation(token: str):
    """The invitation's landing page: who invites, where, and how to get on board."""
    config = settings()
    policy = invite_policy()
    found = landing.open_landing(
        token,
        secret=policy.landing_secret,
        max_age_seconds=config.invite_validity_seconds,
        now=now(),
    )
    details = None
    if found.invitation is not None:
        platform = routing.current().resolve(found.invitation.address).platform
        details = invitations.mail_context(
            found.invitation,
            found.ephemeral_private_key or "",
            policy,
            guest=platform.requires_invite,
        )
    context = landing.page_context(found, details)
    page = render_template(
        "pages/invitation.html",
        lang=page_language(),
        ios_app_url=config.ios_app_url,
        android_app_url=config.android_app_url,
        **context,
    )
    # The link carries the invitation's private key: keep it out of other sites' logs.
    return page, found.status, {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
