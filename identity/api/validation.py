"""/validate/email/* and /3pid/getValidated3pid: proving that someone owns an address."""

from dataclasses import dataclass
from functools import partial

from flask import Blueprint
from flask import redirect
from flask import request

from identity import i18n
from identity import mailer
from identity import presentation
from identity import validation
from identity.api.auth import require_user
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import settings
from identity.brands import is_brand
from identity.clock import to_ms
from identity.errors import MatrixError
from identity.errors import TokenIncorrect
from identity.errors import Unrecognized
from identity.extensions import db
from identity.services import services

bp = Blueprint("validation", __name__, url_prefix="/_matrix/identity")


@dataclass(slots=True)
class RequestTokenBody:
    client_secret: str
    email: str
    send_attempt: int
    next_link: str | None = None


@dataclass(slots=True)
class SubmitTokenBody:
    sid: str
    client_secret: str
    token: str


@dataclass(slots=True)
class SessionQuery:
    sid: str
    client_secret: str


def policy() -> validation.Policy:
    """The validation policy, built once per app (identity.services)."""
    return services().validation


@route(bp, "/validate/email/requestToken", methods=["POST"], auth=require_user)
def request_token(v2: bool):
    body = parse(RequestTokenBody, json_body(allow_form=not v2))
    session = validation.request_code(
        body.email,
        body.client_secret,
        body.send_attempt,
        body.next_link,
        brand=requested_brand(),
        now=now(),
        policy=policy(),
        send=partial(
            presentation.send_code_mail,
            base_url=settings().public_base_url,
            mailer=services().mailer,
        ),
    )
    db.session.commit()
    return {"sid": session.sid}


@route(bp, "/validate/email/submitToken", methods=["POST"], auth=require_user)
def submit_token(v2: bool):
    body = parse(SubmitTokenBody, json_body(allow_form=not v2))
    _submit(body)
    return {"success": True}


@route(bp, "/validate/email/submitToken", methods=["GET"], auth=require_user)
def submit_token_page(v2: bool):
    """The link in the mail: validate, then redirect to next_link or show a page."""
    try:
        session = _submit(parse(SubmitTokenBody, request.args))
    except MatrixError as e:
        return _result_page(success=False, errcode=e.errcode), e.status
    if next_link := validation.redirect_for(session, settings().next_link_domain_allowlist):
        return redirect(next_link, code=302)
    return _result_page(success=True, errcode=None)


@route(bp, "/3pid/getValidated3pid", methods=["GET"], auth=require_user)
def get_validated_3pid(v2: bool):
    query = parse(SessionQuery, request.args)
    session = validation.get_validated_session(
        query.sid,
        query.client_secret,
        now=now(),
        lifetime=settings().session_lifetime,
    )
    return {
        "medium": session.medium,
        "address": session.address,
        "validated_at": to_ms(validation.validated_at(session)),
    }


@route(bp, "/validate/msisdn/requestToken", methods=["POST"])
@route(bp, "/validate/msisdn/submitToken", methods=["GET", "POST"])
def msisdn_not_supported(v2: bool):
    # This network identifies people by their professional email only.
    raise Unrecognized("Phone numbers are not supported by this identity server")


def _submit(body: SubmitTokenBody):
    try:
        session = validation.submit_token(
            body.sid, body.client_secret, body.token, now=now(), policy=policy()
        )
    except TokenIncorrect:
        db.session.commit()  # keep the failed attempt: it counts towards the limit
        raise
    db.session.commit()
    return session


def requested_brand() -> str | None:
    brand = request.args.get("brand")
    return brand if brand and is_brand(brand) else None


def _result_page(*, success: bool, errcode: str | None) -> str:
    sydent_template = mailer.sydent_template_path(
        "verify_response", requested_brand(), services().mailer.settings
    )
    if sydent_template is not None:
        return mailer.render_sydent_page(sydent_template, success=success)
    outcome = {"success": success, "errcode": errcode}
    return i18n.render_in_default_language(
        "pages/validation_result.html",
        versions=i18n.render_each_language("pages/validation_result_version.html", **outcome),
        title=i18n.join_lines(
            i18n.render_each_language("pages/validation_result_title.txt", **outcome)
        ),
    )
