"""HTML pages reached from links in emails: server-rendered, French first, no JavaScript.

The page's language is chosen per request (identity.i18n: ?lang=, then the browser's).
Every HTML response gets the browser protections of identity.headers (wsgi.py adds
them): the pages' styles are the one stylesheet `inline_styles` names, nothing else.
"""

from functools import partial
from typing import Any

from flask import Blueprint
from flask import Flask
from flask import render_template
from flask import request

from identity import i18n
from identity import landing
from identity import presentation
from identity import refusals
from identity.api.http import invite_policy
from identity.api.http import now
from identity.api.http import routing_table
from identity.api.http import settings
from identity.errors import LimitExceeded
from identity.errors import MatrixError
from identity.errors import TokenIncorrect
from identity.extensions import db
from identity.limits import private_key
from identity.services import services
from identity.storage.models import Invitation

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


# -- the guest's own say (identity.refusals) ------------------------------------
# No cookie and no JavaScript: the link's token authenticates every form, as it does
# the one-click POST mailbox providers send (RFC 8058). A GET never records anything:
# link scanners fetch every link of a mail.

REFUSAL_PAGE = "pages/refusal.html"
REPORT_PAGE = "pages/report.html"
# The one-click body (RFC 8058 section 3.1): what mailbox providers POST.
ONE_CLICK = ("List-Unsubscribe", "One-Click")
# The longest sid, client secret or code the lift form may carry (the spec's grammar).
_MAX_FIELD = 255


@bp.get(refusals.REFUSE_PATH + "/<token>")
def refusal(token: str):
    """The refusal page: the two scopes as a form, and the way back when refused."""
    return _guest_page(REFUSAL_PAGE, _open(token))


@bp.post(refusals.REFUSE_PATH + "/<token>")
def refuse(token: str):
    """Record the refusal: RFC 8058's one-click body (the platform), or the page's form."""
    if (limited := _limit(token)) is not None:
        return limited
    invitation = _open(token)
    if invitation is None:
        return _guest_page(REFUSAL_PAGE, None)
    form = request.form
    scope = refusals.ALL if form.get(ONE_CLICK[0]) == ONE_CLICK[1] else form.get("scope")
    if scope not in refusals.SCOPES:
        return _guest_page(REFUSAL_PAGE, invitation, status=400, error="scope")
    refusals.refuse(invitation, scope, keys=invite_policy().guest_keys, now=now())
    db.session.commit()
    return _guest_page(REFUSAL_PAGE, invitation, done=scope)


@bp.post(refusals.REFUSE_PATH + "/<token>/undo")
def request_lift(token: str):
    """Mail a code to the invitation's address, to lift the refusal (the address comes
    from the invitation, never from the request)."""
    if (limited := _limit(token)) is not None:
        return limited
    invitation = _open(token)
    if invitation is None:
        return _guest_page(REFUSAL_PAGE, None)
    current = services()
    try:
        session = refusals.request_lift_code(
            invitation,
            keys=invite_policy().guest_keys,
            now=now(),
            policy=current.validation,
            send=partial(
                presentation.send_code_mail,
                base_url=current.settings.public_base_url,
                mailer=current.mailer,
            ),
        )
    except MatrixError as e:
        return _guest_page(REFUSAL_PAGE, invitation, status=e.status, error=e.errcode)
    db.session.commit()
    if session is None:
        return _guest_page(REFUSAL_PAGE, invitation)
    return _guest_page(
        REFUSAL_PAGE, invitation, sid=session.sid, client_secret=session.client_secret
    )


@bp.post(refusals.REFUSE_PATH + "/<token>/lift")
def lift(token: str):
    """Lift the refusal once the code mailed to the invitation's address is typed."""
    if (limited := _limit(token)) is not None:
        return limited
    invitation = _open(token)
    if invitation is None:
        return _guest_page(REFUSAL_PAGE, None)
    fields = [request.form.get(name, "") for name in ("sid", "client_secret", "code")]
    if not all(0 < len(value) <= _MAX_FIELD and "\x00" not in value for value in fields):
        return _guest_page(REFUSAL_PAGE, invitation, status=400, error="M_MISSING_PARAMS")
    sid, client_secret, code = fields
    retry = {"sid": sid, "client_secret": client_secret}
    try:
        refusals.lift_with_code(
            invitation,
            sid,
            client_secret,
            code,
            keys=invite_policy().guest_keys,
            now=now(),
            policy=services().validation,
        )
    except TokenIncorrect as e:
        db.session.commit()  # the wrong code counts towards the session's limit
        return _guest_page(REFUSAL_PAGE, invitation, status=e.status, error=e.errcode, **retry)
    except MatrixError as e:
        return _guest_page(REFUSAL_PAGE, invitation, status=e.status, error=e.errcode)
    db.session.commit()
    return _guest_page(REFUSAL_PAGE, invitation, done="lifted")


@bp.get(refusals.REPORT_PATH + "/<token>")
def report_page(token: str):
    """The report page: "I don't know this person" as a form."""
    return _guest_page(REPORT_PAGE, _open(token))


@bp.post(refusals.REPORT_PATH + "/<token>")
def report(token: str):
    """Record the report against the inviting account (once per reporting address)."""
    if (limited := _limit(token)) is not None:
        return limited
    invitation = _open(token)
    if invitation is None:
        return _guest_page(REPORT_PAGE, None)
    policy = invite_policy()
    refusals.report(invitation, keys=policy.guest_keys, rule=policy.reports, now=now())
    db.session.commit()
    return _guest_page(REPORT_PAGE, invitation, done="reported")


def _open(token: str) -> Invitation | None:
    policy = invite_policy()
    return refusals.open_link(
        token, keys=policy.guest_keys, link_lifetime=policy.guest_link_lifetime, now=now()
    )


def _limit(token: str) -> tuple[str, int, dict[str, str]] | None:
    """The 429 page when the link was posted to too often (RATELIMIT_PER_GUEST_LINK)."""
    try:
        services().limits.check("per_guest_link", private_key(token))
    except LimitExceeded as e:
        seconds = max(1, -(-int(e.extra.get("retry_after_ms", 1000)) // 1000))
        page, status, headers = _guest_page(REFUSAL_PAGE, None, status=429, error=e.errcode)
        return page, status, {**headers, "Retry-After": str(seconds)}
    return None


def _guest_page(
    template: str, invitation: Invitation | None, *, status: int = 200, **outcome: Any
) -> tuple[str, int, dict[str, str]]:
    context = presentation.guest_page(invitation, invite_policy(), **outcome)
    if invitation is not None:
        # The forms post back to the link the guest holds (and its rate limit).
        context["token"] = (request.view_args or {}).get("token", context["token"])
    if invitation is None and status == 200:
        status = 404  # a forged, altered or expired link: the page says so
    page = render_template(template, other_languages=i18n.other_languages(), **context)
    # The link authenticates whoever holds it: kept out of caches.
    return page, status, {"Cache-Control": "no-store"}


STYLESHEET = "pages/style.css"


def inline_styles(app: Flask) -> list[str]:
    """The text of each `<style>` element the pages hold (base.html includes it).

    Rendered as the include renders it, so that its hash is the one the browser computes.
    """
    return [app.jinja_env.get_template(STYLESHEET).render()]
